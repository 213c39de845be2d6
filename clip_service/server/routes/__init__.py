"""The entry's HTTP routes, by feature; ``service.py`` composes them.

The operations (``POST`` with a typed body) are BentoML APIs, declared in route classes the
service inherits (``EmbeddingRoutes``, ``ClassificationRoutes``, ``InterrogationRoutes``):
BentoML validates them, documents them and serves its own clients for them. The resources
(``GET``/``DELETE``, and ``POST /label-tables``, which stores one), caller-named form fields
(``/embeddings``) and the demo page are a FastAPI router per feature (``jobs``,
``label_tables``, ``model``, ``weaviate``, and ``embeddings`` beside its route class),
mounted on the same service and document. Both kinds
take their dependencies from one :class:`~clip_service.server.entry.Entry`: the route
classes as ``self.entry``, the routers through :func:`.common.current_entry`.
"""
