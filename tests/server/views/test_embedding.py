"""The `embedding` view: t-SNE or PCA of a probed layer, computed once and then cached."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from gallery import GalleryRuns
from images import assert_drawn, view
from sklearn.decomposition import PCA
from sqlalchemy import Engine, text
from stored_probes import StoredProbe, assert_same_up_to_sign


def _cached(engine: Engine, run_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT layer, step, method, perplexity, points, coordinates FROM embeddings "
                 "WHERE run_id = :run_id ORDER BY method, perplexity"), {"run_id": run_id},
        )  # fmt: skip
        return [tuple(row) for row in rows]


def test_embedding_is_computed_once_then_read_from_the_cache(
    api: httpx.Client, gallery_runs: GalleryRuns, engine: Engine
) -> None:
    run_id = gallery_runs.mlp
    params = {"perplexity": 21.5}
    first = api.get(f"/runs/{run_id}/plots/embedding.json", params=params)
    assert first.status_code == 200
    data = first.json()
    probe = StoredProbe(api, run_id, 100)
    chosen = (data["layer"], data["step"], data["method"], data["perplexity"])
    assert chosen == ("3", 100, "tsne", 21.5)
    assert data["input_dims"] == 16
    assert data["samples"] == list(range(200))
    assert data["labels"] == probe.labels.tolist()
    assert (data["color_by"], data["classes"]) == ("label", list(range(10)))
    [row] = [row for row in _cached(engine, run_id) if row[3] == 21.5]
    assert row[:5] == ("3", 100, "tsne", 21.5, 200)
    stored = np.frombuffer(bytes(row[5]), "<f4").reshape(-1, 2)
    assert stored[:, 0].tolist() == data["x"]
    assert stored[:, 1].tolist() == data["y"]

    second = api.get(f"/runs/{run_id}/plots/embedding.json", params=params)
    assert second.content == first.content

    # Proof that the second answer came from the table: change the row, see it served.
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE embeddings SET coordinates = :data WHERE run_id = :run_id AND "
                 "perplexity = 21.5"),
            {"data": np.full((200, 2), 7.0, "<f4").tobytes(), "run_id": run_id},
        )  # fmt: skip
    # Naming the layer it chose is another request (the server keeps rendered answers
    # by ETag, and the ETag names the parameters given): computed again, from the table.
    third = view(api, run_id, "embedding", **params, layer="3")
    assert set(third["x"]) == {7.0}


def test_embedding_requests_at_once_store_one_row(
    api: httpx.Client, gallery_runs: GalleryRuns, engine: Engine
) -> None:
    run_id = gallery_runs.cnn
    with ThreadPoolExecutor(2) as pool:
        url = f"/runs/{run_id}/plots/embedding.json"
        answers = list(pool.map(lambda _: api.get(url, params={"perplexity": 12}), range(2)))
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json()["x"] == answers[1].json()["x"]
    assert [row[3] for row in _cached(engine, run_id)].count(12.0) == 1


def test_embedding_by_pca_and_a_lowered_perplexity(
    api: httpx.Client, gallery_runs: GalleryRuns, tiny_run: str
) -> None:
    data = view(api, gallery_runs.mlp, "embedding", method="pca", layer="0", step=50)
    features = StoredProbe(api, gallery_runs.mlp, 50).features("0")
    expected = PCA(n_components=2, svd_solver="full").fit_transform(features)
    assert_same_up_to_sign(np.column_stack([data["x"], data["y"]]), expected)
    assert (data["perplexity"], data["axis_labels"]) == (None, ["PCA 1", "PCA 2"])

    low = view(api, tiny_run, "embedding")  # 50 samples: perplexity at most 49 / 3
    assert low["perplexity"] == pytest.approx(49 / 3)
    assert low["notes"] == ["perplexity lowered to 16.33 for 50 samples"]
    assert (low["color_by"], len(low["x"])) == ("prediction", 50)
    assert_drawn(api.get(f"/runs/{tiny_run}/plots/embedding.png").content)
