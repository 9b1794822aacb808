"""Running the policy server on a Ray cluster with Ray Serve (``python -m server.ray``).

Nothing here is imported by the plain server: Ray is the optional extra ``.[ray]``.
"""
