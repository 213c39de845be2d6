"""The entry's HTTP routes, by feature; ``service.py`` composes them.

Operations with a typed body (``POST``) are BentoML APIs, declared in route classes the
service inherits (``EmbeddingRoutes``, ``ClassificationRoutes``, ``InterrogationRoutes``):
BentoML validates them, documents them and serves its own clients for them. What its API
decorator cannot express (``GET``/``DELETE`` resources, caller-named form fields, the demo
page) is a FastAPI router per feature, mounted on the same service and document. Both kinds
take their dependencies from one :class:`~clip_service.server.entry.Entry`: the route
classes as ``self.entry``, the routers through :func:`.common.current_entry`.
"""
