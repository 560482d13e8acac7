"""edge-runtime: answer devices locally with an INT8 GLM behind Proxy-Wasm filters."""

__version__ = "0.1.0"
