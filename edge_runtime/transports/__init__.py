"""Transports: the only code that knows MQTT or CoAP."""
