"""`model`: a watched model's module tree as a table, with each module's own parameters.

The client sends the tree once, at the model's first forward pass: every module
of ``named_modules()`` with its class, the parameters it owns itself (not its
children's) and the tensor shapes it saw. The image is the table as the y-axis
of a bar chart of those parameter counts, so the heavy modules stand out.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch_server import store
from layerwatch_server.errors import NotFound
from layerwatch_server.views.base import Part, View, ViewData, ViewParams, fit_text, show_no_data
from layerwatch_server.views.probing import listing
from layerwatch_server.wire_schema import Name

NO_TREE = (
    "the run has no model tree: the client sends one at the first forward pass of a model "
    "given to `run.watch(...)`"
)
_WIDTHS = (40, 24, 28, 14)
"""Most characters of the module, type, output shape and params columns."""


class ModelParams(ViewParams):
    rank: int = Field(0, ge=0, le=2**31 - 1)
    model: Name | None = Field(None, description="Model class name; default: the first.")
    max_rows: int = Field(60, ge=1, le=1000, description="Modules listed (the first ones).")


class ModuleRow(Part):
    path: str = Field(description="`named_modules()` name; empty for the model itself.")
    type: str
    depth: int = Field(description="0 for the model, 1 for its children, ...")
    params: int = Field(description="Parameters the module owns itself.")
    trainable: int
    inputs: list[list[int]] | None
    outputs: list[list[int]] | None


class ModelData(ViewData):
    model: str | None
    models: list[str] = Field(description="Models of the run at `rank`.")
    rank: int
    total_params: int
    trainable_params: int
    modules: int = Field(description="Modules of the tree, before `max_rows`.")
    rows: list[ModuleRow]


def compute_model(session: Session, run_id: str, params: ModelParams) -> ModelData:
    trees = store.get_model_trees(session, run_id, rank=params.rank).data
    names = [tree.name for tree in trees]
    data = ModelData(view="model", run_id=run_id, title="Model", model=None, models=names,
                     rank=params.rank, total_params=0, trainable_params=0, modules=0,
                     rows=[])  # fmt: skip
    if params.model is not None and params.model not in names:
        raise NotFound(f"`model` `{params.model}`: run `{run_id}` has no such model at rank "
                       f"{params.rank}; models: {listing(names)}")  # fmt: skip
    if not trees:
        data.notes.append(NO_TREE)
        return data
    tree = next(t for t in trees if params.model in (None, t.name))
    rows = [
        ModuleRow(path=m.path, type=m.type, depth=m.path.count(".") + 1 if m.path else 0,
                  params=m.params, trainable=m.trainable, inputs=m.inputs, outputs=m.outputs)
        for m in tree.modules
    ]  # fmt: skip
    capped = len(rows) > params.max_rows
    if capped:
        data.notes.append(f"the first {params.max_rows} of {len(rows)} modules; raise `max_rows`")
    trainable = sum(row.trainable for row in rows)
    title = (f"{tree.name}: {tree.params:,} parameters ({trainable:,} trainable), "
             f"{len(rows)} modules")  # fmt: skip
    return data.model_copy(update=dict(
        title=title, model=tree.name, total_params=tree.params, trainable_params=trainable,
        modules=len(rows), rows=rows[: params.max_rows], downsampled=capped,
    ))  # fmt: skip


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _shape(shapes: list[list[int]] | None) -> str:
    return ", ".join("(" + ", ".join(map(str, s)) + ")" for s in shapes) if shapes else "-"


def _table(data: ModelData) -> list[str]:
    """Header and one monospace line per module; columns as wide as their content (capped)."""
    cells = [
        ("  " * row.depth + (row.path.rsplit(".", 1)[-1] if row.path else data.model or ""),
         row.type, _shape(row.outputs), f"{row.params:,}")
        for row in data.rows
    ]  # fmt: skip
    header = ("module", "type", "output shape", "params")
    widths = [min(cap, max(len(line[i]) for line in [header, *cells]))
              for i, cap in enumerate(_WIDTHS)]  # fmt: skip
    return [
        " ".join([*(_cell(c, w).ljust(w) for c, w in zip(line[:3], widths, strict=False)),
                  line[3].rjust(widths[3])])
        for line in [header, *cells]
    ]  # fmt: skip


def draw_model(figure: Figure, data: ModelData) -> None:
    """The table as tick labels of a horizontal bar chart of own parameters, top down."""
    if not data.rows:
        show_no_data(figure, data.title, data.notes)
        return
    figure.suptitle(data.title + (" (downsampled)" if data.downsampled else ""))
    axes = figure.add_subplot()
    labels = _table(data)
    # Monospace characters are about 0.6 em wide: the table takes at most ~60% of the
    # width and each line at most its share of the height, so the layout never collapses.
    width_pts = figure.get_figwidth() * 72 * 0.6
    height_pts = figure.get_figheight() * 72 * 0.75
    fontsize = min(9.0, width_pts / (0.6 * len(labels[0])), 0.8 * height_pts / len(labels))
    counts = [0] + [row.params for row in data.rows]
    axes.barh(range(len(labels)), counts, color=["none"] + ["tab:blue"] * len(data.rows))
    axes.set_ylim(len(labels) - 0.5, -0.5)  # the first module on top, under the header
    axes.set_xlabel("parameters the module owns itself")
    axes.tick_params(axis="x", labelsize="small")
    axes.grid(True, axis="x", alpha=0.3)
    fit_text(figure)  # the table's font is already fitted: set it after
    axes.set_yticks(range(len(labels)), labels, fontfamily="monospace",
                    fontsize=max(1.0, fontsize))  # fmt: skip
    axes.get_yticklabels()[0].set_fontweight("bold")


MODEL = View("model", "The module tree of a watched model, with parameter counts.",
             ModelParams, ModelData, compute_model, draw_model)  # fmt: skip
