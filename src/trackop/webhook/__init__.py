"""The admission webhooks: Pod injection and TrackingBackend validation.

Pure decisions (injection, validation), the in-memory index they read and its watch, the
HTTPS server and its certificates, and the service that keeps them served.
"""
