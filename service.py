"""The entry service: the HTTP routes of ``clip_service.server.routes``, composed on the
model services (``runners/``).

A route reads top to bottom: what its body is (``@takes``: raw image bytes, a form rewritten
into its JSON, ...; the request reader does it), its guard (``@guard``: deadline, in-flight
limit, errors as answers), then a few lines calling the entry's side of the work
(:class:`~clip_service.server.entry.Entry`), which calls ``ClipEncoder`` and
``BlipCaptioner``. The operations are BentoML APIs, in one route class per feature; the
resources (``GET``/``DELETE``), caller-named form fields and the demo page are FastAPI
routers, mounted here (see :mod:`clip_service.server.routes`).
"""

from __future__ import annotations

import bentoml
import torch

from clip_service.process.disconnect import CancelOnDisconnect
from clip_service.process.drain import Drain
from clip_service.process.request_ids import HEADERS as REQUEST_ID_HEADERS
from clip_service.server.auth import ApiKeys, warn_if_open
from clip_service.server.entry import Entry
from clip_service.server.forms import declared_bodies
from clip_service.server.middleware import AccessControl, RequestReader, ResponseShaper
from clip_service.server.routes.app import routers_app
from clip_service.server.routes.classification import ClassificationRoutes
from clip_service.server.routes.embeddings import EmbeddingRoutes
from clip_service.server.routes.interrogation import InterrogationRoutes
from clip_service.server.routes.sd_webui import SdWebuiRoutes
from clip_service.server.upstream import Guarded
from clip_service.settings import get_settings
from runners.blip_captioner import BlipCaptioner
from runners.clip_encoder import ClipEncoder

settings = get_settings()
warn_if_open(bool(settings.api_key_list))


@bentoml.asgi_app(routers_app())
@bentoml.service(
    name="ClipApi",
    # BentoML's own timeout only backs up the routes' guard, which answers 504 in the
    # project's shape first.
    traffic={"timeout": settings.request_timeout_s + 5},
    workers=settings.entry_worker_count,
)
class ClipApi(EmbeddingRoutes, ClassificationRoutes, InterrogationRoutes, SdWebuiRoutes):
    # Each model service runs beside this one unless its URL is set (split deployment);
    # CAPTION_MODEL=none serves CLIP alone: no captioner is started.
    encoder = bentoml.depends(ClipEncoder, url=settings.clip_encoder_url)
    if settings.interrogation:
        captioner = bentoml.depends(BlipCaptioner, url=settings.captioner_url)

    def __init__(self) -> None:
        # Decoding and preprocessing run many requests at once in threads: one torch thread
        # each, or they fight the model (on the same cores) for every core; 2-30x slower
        # when they did. Here, not at import: the model services import this module too.
        torch.set_num_threads(1)
        dependencies = [self.encoder]
        captioner = None
        if settings.interrogation:
            dependencies.append(self.captioner)
            captioner = Guarded(self.captioner.to_async, "BlipCaptioner")
        encoder = Guarded(self.encoder.to_async, "ClipEncoder")
        self.entry = Entry.build(settings, encoder, captioner, dependencies)

    @bentoml.on_startup
    def start_serving(self) -> None:
        """On SIGTERM: refuse new connections at once, finish the requests in flight. Jobs:
        renew this worker's leases and sweep lost jobs from now on."""
        Drain("entry").install()
        self.entry.jobs.start()

    @bentoml.on_shutdown
    async def stop_jobs(self) -> None:
        """This worker's unfinished jobs fail now, saying to submit them again, rather than
        when their lease runs out."""
        await self.entry.jobs.stop()

    async def __is_ready__(self) -> bool:
        """/readyz: 503 at once while a model service is down, restarting or unreachable."""
        return await self.entry.ready()


# Outermost first (BentoML adds them in this order, each wrapping the next).
ClipApi.add_asgi_middleware(CancelOnDisconnect)
ClipApi.add_asgi_middleware(ResponseShaper)
ClipApi.add_asgi_middleware(
    AccessControl,
    origins=settings.cors_origins,
    keys=(
        ApiKeys(settings.api_key_list, settings.public_metrics, settings.public_docs)
        if settings.api_key_list
        else None
    ),
    expose=[*REQUEST_ID_HEADERS, "retry-after", "www-authenticate"],
)
ClipApi.add_asgi_middleware(
    RequestReader,
    bodies=declared_bodies(ClipApi.apis.values()),
    max_bytes=settings.max_body_bytes,
    read_timeout_s=settings.body_read_timeout_s,
    max_json_depth=settings.max_json_depth,
)
