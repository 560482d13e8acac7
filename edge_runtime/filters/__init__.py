"""Proxy-Wasm filters on wasmtime: the host, the chain, the module cache and restart policy."""
