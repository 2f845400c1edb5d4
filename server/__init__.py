"""The ServerApp: validate client updates, aggregate them, step theta with a server optimizer."""
