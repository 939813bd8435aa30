"""One module per platform, each a `channels_app.transport.Transport`."""
