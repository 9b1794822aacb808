"""One codec per protocol: decode a request into the core's rows, encode outputs and errors."""
