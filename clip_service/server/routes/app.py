"""The FastAPI app of the entry's routers, its errors in the project's shape, and the demo
page; ``service.py`` mounts it on ``ClipApi``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.staticfiles import StaticFiles

from clip_service.errors import error_body, validation_message
from clip_service.server.routes import embeddings, jobs, label_tables, model, sd_webui, weaviate


def routers_app() -> FastAPI:
    """The routes BentoML's API decorator cannot express, with their errors answered as
    every route answers them. BentoML serves the OpenAPI document of both."""
    app = FastAPI(title="clip-service", openapi_url=None, docs_url=None, redoc_url=None)
    for feature in (model, embeddings, jobs, label_tables, weaviate, sd_webui):
        app.include_router(feature.router)
    app.add_exception_handler(HTTPException, unreadable_body)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_body)  # type: ignore[arg-type]
    app.add_api_route("/ui", demo_page, include_in_schema=False)
    app.mount("/ui", StaticFiles(packages=[("clip_service", "ui")], html=True), name="ui")
    return app


async def unreadable_body(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors in the project's shape; a body it cannot parse is the body's."""
    message = f"body: {exc.detail}" if exc.status_code == 400 else str(exc.detail)
    return JSONResponse(error_body(message), exc.status_code, headers=exc.headers)


async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """The routers answer bad bodies as every route does: a 400 naming the fields."""
    errors = [
        {**e, "loc": e["loc"][1:] if e["loc"][:1] == ("body",) else e["loc"]} for e in exc.errors()
    ]
    return JSONResponse(error_body(validation_message(errors)), status_code=400)


async def demo_page() -> RedirectResponse:
    """/ui -> /ui/, relative, so the page's relative asset and API URLs resolve under any
    prefix a proxy puts in front of the service."""
    return RedirectResponse("ui/", status_code=308)
