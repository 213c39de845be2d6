"""The users' own label tables: stored, listed and deleted here; used by ``/classify``
(``label_set``), ``/interrogate`` and ``/analyze`` (``label_tables``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from clip_service.errors import NotFound
from clip_service.interrogation.custom_tables import CustomTableStatus
from clip_service.server.routes.common import EntryDep, guard

router = APIRouter(tags=["Label tables"])


class CustomTableBody(BaseModel):
    name: str = Field(description="1-64 of a-z, 0-9, _ and -")
    labels: list[str] = Field(description="the terms, one per item")


@router.post(
    "/label-tables",
    response_model=CustomTableStatus,
    status_code=202,
    responses={200: {"description": "ready already"}, 400: {"description": "a bad list"}},
)
@guard
async def put_label_table(table: CustomTableBody, entry: EntryDep) -> JSONResponse:
    """Store a custom label table (replacing one of that name) and embed its terms once,
    in the background (202 until ready); cached by model and list."""
    status = await entry.custom_tables.put(table.name, table.labels)
    code = 200 if status.state == "ready" else 202
    return JSONResponse(status.model_dump(), status_code=code)


@router.get("/label-tables", response_model=list[CustomTableStatus])
@guard
async def label_tables(entry: EntryDep) -> list[CustomTableStatus]:
    """The custom label tables (``POST /label-tables``, or files in ``CUSTOM_TABLES_DIR``)
    and whether each is ready."""
    return await entry.custom_tables.all()


@router.delete(
    "/label-tables/{name}",
    status_code=204,
    responses={404: {"description": "no such table"}},
)
@guard
async def delete_label_table(name: str, entry: EntryDep) -> Response:
    """Remove a custom label table (its cached embeddings stay, keyed by its terms)."""
    if not await entry.custom_tables.delete(name):
        raise NotFound(f"name: no custom label table {name!r}")
    return Response(status_code=204)
