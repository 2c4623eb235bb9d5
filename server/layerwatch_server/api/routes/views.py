"""The plot gallery over HTTP: ``<view>.png`` and its JSON twin ``<view>.json`` per view.

Both answer with an ETag made of the view, its parameters and the run's data
version, so a repeated request is a 304 until new data for the run arrives;
finished runs may also be cached for a while. ``X-Layerwatch-Downsampled``
says when the data was thinned or capped. Images render in worker threads, at
most ``max_concurrent_renders`` at once.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints'
# annotations, and the parameter models are made per view at import time.

import hashlib
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from pydantic import create_model

from layerwatch_server import store
from layerwatch_server.api.answer_cache import AnswerCache, CachedAnswer
from layerwatch_server.api.openapi import error_responses
from layerwatch_server.api.params import RunId
from layerwatch_server.db import managed_session
from layerwatch_server.views import VIEWS, ImageParams, View, ViewData, render_png

FINISHED_MAX_AGE = 3600
DOWNSAMPLED = "X-Layerwatch-Downsampled"
_CACHING = {
    "ETag": {"description": "The view, its parameters and the version of the runs' data.",
             "required": True, "schema": {"type": "string"}},
    "Cache-Control": {"description": "`no-cache` while the run is running, else cacheable.",
                      "required": True, "schema": {"type": "string"}},
}  # fmt: skip
_DOWNSAMPLED = {
    DOWNSAMPLED: {"description": "Whether data was thinned or capped to draw it.",
                  "required": True, "schema": {"type": "string", "enum": ["true", "false"]}},
}  # fmt: skip

router = APIRouter(
    tags=["plots"],
    responses={
        304: {"description": "Not modified since the ETag given in If-None-Match.",
              "headers": _CACHING},
        **error_responses(
            404, 422, 503, not_found="`run_not_found`, `tensor_not_found`, `scalar_not_found`, "
            "`probe_not_found` or `not_found`: no such run, or the run has no such tensor, "
            "scalar, probe, layer or model."
        ),
    },
)  # fmt: skip


def _etag(view: str, fmt: str, params: dict[str, Any], version: tuple[object, ...]) -> str:
    key = repr((view, fmt, sorted(params.items()), version)).encode()
    return '"' + hashlib.sha256(key).hexdigest()[:32] + '"'


def _matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match", "")
    return any(tag.strip().removeprefix("W/") in (etag, "*") for tag in header.split(","))


async def _answer(
    request: Request, view: View[Any, Any], run_id: str, params: Any, image: ImageParams | None
) -> Response:
    sessions = request.app.state.read_sessions
    fmt = "png" if image is not None else "json"
    key = params.model_dump(mode="json") | ({} if image is None else image.model_dump())

    answers: AnswerCache = request.app.state.answer_cache

    def compute() -> tuple[str, str, ViewData | CachedAnswer | None]:
        with managed_session(sessions) as session:
            status, version = store.data_version(session, run_id)
            # Overlaid runs are part of the picture: their new data changes it too.
            others = [
                store.data_version(session, other) for other in getattr(params, "compare", ())
            ]
            etag = _etag(view.name, fmt, key, (status, version, *others))
            if _matches(request, etag):
                return etag, status, None
            cached = answers.get(etag)  # another user's reload, say
            if cached is not None:
                return etag, status, cached
            return etag, status, view.compute(session, run_id, params)

    etag, status, data = await anyio.to_thread.run_sync(compute)
    cache = "no-cache" if status == "running" else f"public, max-age={FINISHED_MAX_AGE}"
    headers = {"ETag": etag, "Cache-Control": cache}
    if data is None:
        return Response(status_code=304, headers=headers)
    if isinstance(data, CachedAnswer):
        answer = data
    elif image is None:
        answer = CachedAnswer(data.model_dump_json().encode(), "application/json",
                              data.downsampled)  # fmt: skip
    else:
        limiter: anyio.CapacityLimiter = request.app.state.render_limiter
        png = await anyio.to_thread.run_sync(render_png, view, data, image, limiter=limiter)
        answer = CachedAnswer(png, "image/png", data.downsampled)
    answers.put(etag, answer)
    headers[DOWNSAMPLED] = "true" if answer.downsampled else "false"
    return Response(answer.body, media_type=answer.media_type, headers=headers)


def _add_routes(view: View[Any, Any]) -> None:
    params_model = view.params
    png_model: Any = create_model(
        f"{params_model.__name__}Png", __base__=(params_model, ImageParams)
    )
    image_fields = set(ImageParams.model_fields)

    async def png(
        request: Request,
        run_id: RunId,
        params: Annotated[png_model, Query()],
    ) -> Response:
        # Only what the user gave: a view may check which parameters were set.
        values = params.model_dump(exclude_unset=True)
        image = ImageParams(**{k: values.pop(k) for k in image_fields if k in values})
        return await _answer(request, view, run_id, params_model(**values), image)

    async def json(
        request: Request,
        run_id: RunId,
        params: Annotated[params_model, Query()],  # type: ignore[valid-type]
    ) -> Response:
        return await _answer(request, view, run_id, params, None)

    router.add_api_route(
        f"/runs/{{run_id}}/plots/{view.name}.png", png, methods=["GET"],
        summary=view.summary, response_class=Response, name=f"plot_{view.name}_png",
        responses={200: {"content": {"image/png": {}}, "description": "A PNG.",
                         "headers": _CACHING | _DOWNSAMPLED}},
    )  # fmt: skip
    router.add_api_route(
        f"/runs/{{run_id}}/plots/{view.name}.json", json, methods=["GET"],
        summary=f"{view.summary} (the numbers)", response_class=Response,
        name=f"plot_{view.name}_json",
        responses={200: {"model": view.data, "description": "The plotted data.",
                         "headers": _CACHING | _DOWNSAMPLED}},
    )  # fmt: skip


for _view in VIEWS.values():
    _add_routes(_view)
