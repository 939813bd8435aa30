"""Built-in tools, one module each; tools.registry lists them."""
