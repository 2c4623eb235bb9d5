"""The dashboard's pages: shells that the scripts in ``static/`` fill from the JSON API.

Every page needs what the API needs to read (the login cookie, or an open
server); without it the browser is sent to ``/login``. Page state lives in the
URL's query, so a pasted link opens the same view.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from layerwatch_server.api.auth import Authorize, authenticate, bearer
from layerwatch_server.api.params import RunId
from layerwatch_server.auth.access import OPEN, Access
from layerwatch_server.dashboard.templating import render
from layerwatch_server.errors import Unauthorized
from layerwatch_server.views import VIEWS


class LoginRequired(Exception):
    """A page asked for without a live token: answered by a redirect to the login form."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


class AuthorizePage(Authorize):
    """`Authorize` for pages: a reader's token, and the login form instead of a 401."""

    def __call__(  # type: ignore[override]
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Access:
        try:
            access = authenticate(request, credentials)
        except Unauthorized:
            query = f"?{request.url.query}" if request.url.query else ""
            raise LoginRequired(request.url.path + query) from None
        return super().__call__(request, access)


PageAccess = Annotated[Access, Depends(AuthorizePage("read"))]

router = APIRouter(include_in_schema=False)

PROBE_VIEWS = frozenset(
    {"scatter", "embedding", "class-means", "layer-outputs", "feature-maps", "confusion",
     "attributions"}
)  # fmt: skip
"""Views of the probe batch: the gallery gives them a step slider and a play button."""

TITLES = {
    "series": "Statistics over steps",
    "scalars": "Logged scalars",
    "distributions": "Distributions over time",
    "histogram": "Histograms at steps",
    "gradient-flow": "Gradient flow per layer",
    "weight-change": "Weight change",
    "dead-units": "Dead units",
    "scatter": "Inner layer, 2-D scatter by label",
    "embedding": "t-SNE / PCA of hidden features",
    "class-means": "Per-class mean activations",
    "layer-outputs": "Layer outputs of one sample",
    "feature-maps": "Conv feature maps",
    "confusion": "Confusion matrix",
    "attributions": "Integrated-gradient attributions",
    "model": "Model tree",
}


def _page(request: Request, name: str, access: Access, **context: Any) -> Any:
    return render(request, name, {"signed_in": access is not OPEN, **context})


@router.get("/")
def runs_page(request: Request, access: PageAccess) -> Any:
    return _page(request, "runs.html", access, page="runs")


@router.get("/runs/{run_id}")
def run_page(request: Request, access: PageAccess, run_id: RunId) -> Any:
    return _page(request, "run.html", access, page="run", run_id=run_id)


@router.get("/runs/{run_id}/layer")
def layer_page(request: Request, access: PageAccess, run_id: RunId) -> Any:
    return _page(request, "layer.html", access, page="layer", run_id=run_id)


@router.get("/runs/{run_id}/gallery")
def gallery_page(request: Request, access: PageAccess, run_id: RunId) -> Any:
    views = [_describe(name, view.params) for name, view in VIEWS.items()]
    return _page(request, "gallery.html", access, page="gallery", run_id=run_id, views=views)


@router.get("/compare")
def compare_page(request: Request, access: PageAccess) -> Any:
    return _page(request, "compare.html", access, page="compare")


def _describe(name: str, params: type[BaseModel]) -> dict[str, Any]:
    """A view and its parameters as the gallery's controls need them (from the JSON schema)."""
    schema = params.model_json_schema()
    fields = []
    for field, spec in schema.get("properties", {}).items():
        if field in ("compare", "rank", "start", "end"):
            continue  # the run page and compare page own these
        choices = spec.get("enum")
        many = spec.get("type") == "array"
        item = spec.get("items", {}) if many else spec
        options = [o for o in spec.get("anyOf", [item]) if o.get("type") != "null"]
        kind = options[0].get("type", "string") if options else "string"
        choices = choices or options[0].get("enum") if options else choices
        if many and "enum" in item:
            choices = item["enum"]
        fields.append(
            {
                "name": field,
                "type": "enum" if choices else kind,
                "choices": choices or [],
                "many": many,
                "required": field in schema.get("required", []),
                "default": spec.get("default"),
                "minimum": item.get("minimum", (options[0] if options else {}).get("minimum")),
                "maximum": item.get("maximum", (options[0] if options else {}).get("maximum")),
            }
        )
    return {"name": name, "title": TITLES.get(name, name), "probe": name in PROBE_VIEWS,
            "fields": fields}  # fmt: skip
