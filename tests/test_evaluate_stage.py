"""The evaluate stage end to end on a tiny cache, a tiny DeBERTa and a freshly built checkpoint."""
import copy
import csv
import json

import numpy as np
import pytest
import torch
import yaml

from cpsl.config.ablations import switches_for
from cpsl.config.schema import validate_params
from cpsl.formats import run_identity
from cpsl.formats.cache import content_identity, write_cache
from cpsl.formats.run_folder import RunFolderError
from cpsl.metrics.scores import compute_metrics
from cpsl.model.network import build_model
from cpsl.nn.inference import run_inference
from cpsl.nn.text_encoder import tiny_deberta_config
from cpsl.runtime import deps
from cpsl.stages.evaluate import EvaluateError, run_evaluate

L, DA, DV, VOCAB = 8, 5, 7, 100
SIZES = {"train": 4, "valid": 6, "test": 9}


def _split(rng, n, tag):
    ids = rng.integers(5, VOCAB, size=(n, L))
    mask = np.ones((n, L), np.int8)
    mask[:, L - 2:] = 0  # padding at the end, as the aligner writes it
    label = rng.choice([-3.0, -1.5, -0.5, 0.5, 1.0, 2.5], size=n)
    label[0] = 0.0  # exactly one zero label per split
    return {"input_ids": ids, "attention_mask": mask, "acoustic": rng.normal(size=(n, L, DA)).astype(np.float32),
            "visual": rng.normal(size=(n, L, DV)).astype(np.float32), "label": label.astype(np.float32),
            "segment_id": [f"{tag}vid{i}[{i % 2}]" for i in range(n)]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    splits = {s: _split(rng, n, s) for s, n in SIZES.items()}
    cache = tmp / "demo.h5"
    write_cache(cache, splits, {"dataset": "demo", "tokenizer": "tiny", "max_seq_len": L, "acoustic_name": "a",
                                "visual_name": "v", "acoustic_dim": DA, "visual_dim": DV,
                                "raw_manifest_sha256": {"words": "0"}})
    text_dir = tmp / "tiny-deberta"
    torch.manual_seed(0)
    from transformers import AutoModel
    AutoModel.from_config(tiny_deberta_config(VOCAB)).save_pretrained(text_dir)

    with open("params.yaml") as fh:
        params = validate_params(yaml.safe_load(fh))
    params["model"].update(intermediate_dim=8, fusion_dim=8)
    params["execution"]["eval_batch_size"] = 4  # several batches, one of them partial
    torch.manual_seed(1)
    model = build_model(params, switches_for("A6"), DA, DV, str(text_dir), pretrained=True)
    run = tmp / "results" / "A6-seed3"
    run.mkdir(parents=True)
    meta = {"params": params, "ablation": "A6", "seed": 3, "switches": switches_for("A6").as_dict(),
            "acoustic_dim": DA, "visual_dim": DV, "text_model": str(text_dir)}
    # the run identity train records (cpsl.formats.run_identity): these params, this row and seed, this cache, this code
    meta["identity"] = run_identity.identity(params, "A6", 3, cache=content_identity(cache),
                                             code=deps.code_hash("train", "A6"))
    meta["fingerprint"] = run_identity.fingerprint(meta["identity"])
    # the validation MAE the trainer would have recorded for this model
    valid_mae = float(np.mean(np.abs(run_inference(model, splits["valid"], 4, torch.device("cpu")).prediction
                                     - splits["valid"]["label"])))
    # the key the trainer writes (cpsl.train.loop.validate): "valid/mae"
    torch.save({"model": model.state_dict(), "epoch": 4, "valid": {"valid/mae": valid_mae}, "meta": meta},
               run / "best.pt")
    metrics = run_evaluate(params, run, data_path=cache)
    return {"tmp": tmp, "cache": cache, "splits": splits, "params": params, "model": model, "run": run,
            "metrics": metrics}


def _read_predictions(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_metrics_json(setup):
    m = json.loads((setup["run"] / "metrics.json").read_text())
    assert m == setup["metrics"]
    assert (m["ablation"], m["seed"], m["dataset"], m["selected_epoch"]) == ("A6", 3, "demo", 4)
    for split in ("valid", "test"):
        assert m[split]["n"] == SIZES[split] and m[split]["n_nonzero"] == SIZES[split] - 1
        assert {"acc2_nonzero", "f1_haszero", "mae", "corr", "acc7", "mae_nonzero_subset"} <= set(m[split])
        assert all(not isinstance(v, dict) for v in m[split].values())  # flat for `dvc metrics show`


def test_predictions_are_the_checkpoint_models(setup):
    rows = _read_predictions(setup["run"] / "predictions.csv")
    assert [r["split"] for r in rows] == ["valid"] * SIZES["valid"] + ["test"] * SIZES["test"]
    test_rows = [r for r in rows if r["split"] == "test"]
    split = setup["splits"]["test"]
    assert [r["segment_id"] for r in test_rows] == split["segment_id"]
    assert np.allclose([float(r["label"]) for r in test_rows], split["label"])
    # the state dict was loaded: the rebuilt model predicts what the saved model predicts
    direct = run_inference(setup["model"], split, 4, torch.device("cpu")).prediction
    pred = np.array([float(r["prediction"]) for r in test_rows])
    np.testing.assert_allclose(pred, direct, rtol=1e-5, atol=1e-6)
    assert np.ptp(pred) > 0
    # metrics.json is exactly the metrics of predictions.csv
    again = compute_metrics(pred, [float(r["label"]) for r in test_rows])
    for key, value in setup["metrics"]["test"].items():
        assert (value is None and np.isnan(again[key])) or again[key] == pytest.approx(value, rel=1e-12), key


def test_deterministic(setup, capsys):
    first = (setup["run"] / "predictions.csv").read_bytes()
    run_evaluate(setup["params"], setup["run"], data_path=setup["cache"])
    assert "differs from" not in capsys.readouterr().err  # valid MAE agrees with the one recorded in best.pt
    assert (setup["run"] / "predictions.csv").read_bytes() == first
    assert not list(setup["run"].glob(".*.tmp"))


def test_learnt_verdict_in_metrics_json(setup):
    """An untrained A6 (random a/v path) with no history.csv: judged on its reliance draws alone, which stay
    within their noise; a history.csv whose visual head beat the constant predictor unmarks it."""
    verdict = setup["metrics"]["learnt"]
    assert verdict["status"] == "not_learnt" and verdict["av_not_learnt"], verdict
    for stream in ("acoustic", "visual"):
        assert verdict["streams"][stream]["head"] is None and verdict["streams"][stream]["reliance"]["draws"] == 5


def test_learnt_reads_the_heads_from_history_csv(setup, tmp_path):
    from cpsl.formats.run_folder import HISTORY_COLUMNS, write_history
    from cpsl.metrics.av_learnt import constant_predictor_mae

    run = tmp_path / "A6-seed3"
    run.mkdir()
    (run / "best.pt").write_bytes((setup["run"] / "best.pt").read_bytes())
    constant = constant_predictor_mae(setup["splits"]["train"]["label"])
    row = {k: 0.0 for k in HISTORY_COLUMNS}
    write_history(run, [{**row, "epoch": 0, "gm/mae_a": constant, "gm/mae_v": 0.5 * constant}])
    verdict = run_evaluate(setup["params"], run, data_path=setup["cache"])["learnt"]
    assert verdict["status"] == "learnt" and verdict["streams"]["visual"]["head"]["flat"] is False


def test_consistency_warning_fires_when_the_recorded_valid_mae_disagrees(setup, tmp_path, capsys):
    ckpt = torch.load(setup["run"] / "best.pt", weights_only=True)
    ckpt["valid"] = {"valid/mae": ckpt["valid"]["valid/mae"] + 0.5}  # as if the cache changed after training
    run = tmp_path / "A6-seed3"
    run.mkdir()
    torch.save(ckpt, run / "best.pt")
    run_evaluate(setup["params"], run, data_path=setup["cache"])
    err = capsys.readouterr().err
    assert "warning" in err and "differs from" in err and "recorded at training time" in err


def test_reliance_check_in_metrics_json(setup):
    rel = json.loads((setup["run"] / "metrics.json").read_text())["reliance"]
    assert rel["permutations"] == setup["params"]["eval"]["reliance_permutations"] == 5
    for stream in ("acoustic", "visual"):
        assert set(rel[stream]) == {"mae", "corr", "acc2_nonzero", "acc2_haszero"}
        # this random model uses both streams: permuting either moves its test MAE
        assert abs(rel[stream]["mae"]) > 1e-4, rel


def test_missing_checkpoint_names_the_run(setup, tmp_path):
    with pytest.raises(RunFolderError, match=r"A0-seed1: no best.pt"):
        run_evaluate(setup["params"], tmp_path / "A0-seed1", data_path=setup["cache"])


def test_checkpoint_of_other_feature_sizes_is_refused(setup, tmp_path):
    ckpt = torch.load(setup["run"] / "best.pt", weights_only=True)
    ckpt["meta"] = copy.deepcopy(ckpt["meta"])
    ckpt["meta"]["acoustic_dim"] = DA + 1
    run = tmp_path / "A6-seed4"
    run.mkdir()
    torch.save(ckpt, run / "best.pt")
    with pytest.raises(EvaluateError, match="acoustic_dim is 5 but the checkpoint was trained with 6"):
        run_evaluate(setup["params"], run, data_path=setup["cache"])


def test_cache_with_token_ids_outside_the_vocabulary_is_one_clear_error(setup, tmp_path):
    from cpsl.errors import PipelineError

    splits = copy.deepcopy(setup["splits"])
    splits["test"]["input_ids"][2, 1] = VOCAB + 7  # made with another tokenizer
    cache = tmp_path / "demo.h5"
    write_cache(cache, splits, {"dataset": "demo", "tokenizer": "tiny", "max_seq_len": L, "acoustic_name": "a",
                                "visual_name": "v", "acoustic_dim": DA, "visual_dim": DV,
                                "raw_manifest_sha256": {"words": "0"}})
    with pytest.raises(PipelineError, match=r"split 'test' has token id 107 .* first segment 'testvid2\[0\]'"):
        run_evaluate(setup["params"], setup["run"], data_path=cache)
