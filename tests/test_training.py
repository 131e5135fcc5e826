"""Schedule, per-group AdamW, run-directory files and config errors."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from cora_keras import cli
from cora_keras.config import Config, ConfigError, TrainConfig, config_from_dict, load_config
from cora_keras.scene_graph.vocabulary import SPECIAL_TOKENS, Vocabulary
from cora_keras.training import (
    GroupAdamW,
    HistoryFile,
    RunCheckpoints,
    RunDirectoryError,
    WarmupStepDecay,
    learning_rate_schedule,
    prepare_run_dir,
    run_config,
)

CONFIGS = ("demo", "f30k_gru", "coco_gru", "f30k_bert", "coco_bert")


# ------------------------------------------------------------------ schedule


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.125), (1, 0.25), (3, 0.5), (9, 0.5), (10, 0.05), (19, 0.05), (20, 0.005), (99, 0.005)],
)
def test_schedule_warms_up_linearly_then_decays_at_each_boundary(step, expected):
    schedule = WarmupStepDecay(0.5, warmup_steps=4, decay_steps=[10, 20], decay_factor=0.1)
    assert float(keras.ops.convert_to_numpy(schedule(step))) == pytest.approx(expected)


def test_schedule_from_config_counts_epochs_in_steps():
    train = TrainConfig(learning_rate=2.0, warmup_epochs=0.5, decay_epochs=[2, 3], decay_factor=0.5)
    schedule = learning_rate_schedule(train, steps_per_epoch=10)
    assert (schedule.warmup_steps, schedule.decay_steps) == (5, [20, 30])
    values = [float(keras.ops.convert_to_numpy(schedule(s))) for s in (0, 4, 19, 20, 30)]
    assert values == pytest.approx([0.4, 2.0, 2.0, 1.0, 0.5])


def test_schedule_without_warmup_starts_at_the_base_rate():
    schedule = WarmupStepDecay(0.3)
    assert float(keras.ops.convert_to_numpy(schedule(0))) == pytest.approx(0.3)


def test_schedule_round_trips_through_serialisation():
    schedule = WarmupStepDecay(0.5, warmup_steps=4, decay_steps=[10], decay_factor=0.2)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupStepDecay)
    assert restored.get_config() == schedule.get_config()


# ----------------------------------------------------------------- optimizer

GROUPS = [
    {"pattern": "^slow$", "learning_rate_multiplier": 0.1, "weight_decay": 0.05},
    {"pattern": "^fast$", "learning_rate_multiplier": 3.0},
]
LR, DECAY, B1, B2, EPS = 0.5, 0.2, 0.9, 0.999, 1e-7


def _manual_adamw(value, gradients, lr, decay):
    """Reference AdamW (PyTorch's update order) over successive gradients."""
    value, m, v = value.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(gradients, start=1):
        value = value - lr * decay * value
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        alpha = lr * np.sqrt(1 - B2**t) / (1 - B1**t)
        value = value - alpha * m / (np.sqrt(v) + EPS)
    return value


def test_group_multipliers_and_decays_are_applied_per_variable():
    start = {name: np.array([1.0, -2.0, 0.5], np.float32) for name in ("slow", "fast", "plain")}
    variables = [keras.Variable(start[name], name=name) for name in start]
    optimizer = GroupAdamW(GROUPS, learning_rate=LR, weight_decay=DECAY, beta_1=B1, beta_2=B2, epsilon=EPS)
    rng = np.random.default_rng(0)
    gradients = [rng.standard_normal((3, 3)).astype(np.float32) for _ in range(2)]
    for step in gradients:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    expected = {
        "slow": (LR * 0.1, 0.05),
        "fast": (LR * 3.0, DECAY),  # no group decay: the optimizer's
        "plain": (LR, DECAY),  # in no group
    }
    for row, variable in enumerate(variables):
        lr, decay = expected[variable.name]
        reference = _manual_adamw(start[variable.name], [g[row] for g in gradients], lr, decay)
        # Keras computes 1 - beta_2**t in float32 (relative error ~1e-5 at t = 1).
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), reference, rtol=0, atol=5e-5)
    assert [optimizer.group_of(v) for v in variables] == [0, 1, None]


def test_group_adamw_round_trips_through_serialisation():
    optimizer = GroupAdamW(GROUPS, learning_rate=LR, weight_decay=DECAY)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, GroupAdamW)
    assert restored.get_config()["groups"] == [
        {"pattern": "^slow$", "learning_rate_multiplier": 0.1, "weight_decay": 0.05},
        {"pattern": "^fast$", "learning_rate_multiplier": 3.0, "weight_decay": None},
    ]


def test_group_adamw_names_a_bad_group():
    with pytest.raises(ValueError, match=r"groups\[1\]\.rate: unknown key"):
        GroupAdamW([GROUPS[0], {"pattern": "x", "rate": 2.0}])
    with pytest.raises(ValueError, match=r"groups\[0\]: expected a dict with a 'pattern'"):
        GroupAdamW([{"learning_rate_multiplier": 2.0}])


# --------------------------------------------------------------- run files


def _tiny_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.25))
    return model


def _set_kernel(model, value):
    model.layers[0].kernel.assign(np.full((2, 1), value, np.float32))


def _kernel_after_loading(path):
    model = _tiny_model()
    model.load_weights(path)
    return float(keras.ops.convert_to_numpy(model.layers[0].kernel)[0, 0])


def test_checkpoints_keep_the_best_rsum_and_the_last_epoch_across_a_resume(tmp_path):
    model = _tiny_model()
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.set_model(model)
    checkpoints.on_train_begin()
    for epoch, rsum in enumerate([10.0, 5.0, 12.0, 11.0]):
        _set_kernel(model, epoch)
        checkpoints.on_epoch_end(epoch, {"val_rsum": rsum})
    resumed = RunCheckpoints(tmp_path)  # a new process after an interruption
    resumed.set_model(model)
    resumed.on_train_begin()
    _set_kernel(model, 4)
    resumed.on_epoch_end(4, {"val_rsum": 11.5})  # below the best of the first call
    assert json.loads((tmp_path / "best.json").read_text()) == {"epoch": 2, "val_rsum": 12.0}
    assert _kernel_after_loading(tmp_path / "best.weights.h5") == 2.0
    assert _kernel_after_loading(tmp_path / "last.weights.h5") == 4.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.weights.h5", "last.weights.h5"]


def test_checkpoints_need_the_dev_metric_in_the_logs(tmp_path):
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.set_model(_tiny_model())
    checkpoints.on_train_begin()
    with pytest.raises(KeyError, match="no 'val_rsum'.*RetrievalEvaluation"):
        checkpoints.on_epoch_end(0, {"loss": 1.0})


def test_history_file_replaces_the_epochs_a_resume_repeats(tmp_path):
    path = tmp_path / "history.json"
    model = _tiny_model()
    model.optimizer.build(model.trainable_variables)
    first = HistoryFile(path)
    first.set_model(model)
    first.on_train_begin()
    for epoch in range(3):
        first.on_epoch_end(epoch, {"loss": float(epoch)})
    resumed = HistoryFile(path)
    resumed.set_model(model)
    resumed.on_train_begin()
    resumed.on_epoch_end(1, {"loss": 7.0})
    records = json.loads(path.read_text())
    assert [(r["epoch"], r["loss"]) for r in records] == [(0, 0.0), (1, 7.0)]
    assert records[0]["learning_rate"] == pytest.approx(0.25)


def _vocabulary(*words):
    return Vocabulary([*SPECIAL_TOKENS, *words], {}, {}, [])


def test_a_fresh_run_needs_an_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RunDirectoryError, match="not empty; pass --resume"):
        prepare_run_dir(tmp_path, Config(), _vocabulary("cube"), resume=False)


def test_a_resume_may_change_the_epochs_but_names_any_other_change(tmp_path):
    prepare_run_dir(tmp_path, Config(), _vocabulary("cube"), resume=False)
    longer = config_from_dict({"train": {"epochs": 99, "steps_per_epoch": 3}})
    prepare_run_dir(tmp_path, longer, _vocabulary("cube"), resume=True)
    assert load_config(tmp_path / "config.yaml").train.epochs == 99
    other = config_from_dict({"train": {"epochs": 99, "steps_per_epoch": 3, "batch_size": 7}, "loss": {"temperature": 0.5}})
    with pytest.raises(RunDirectoryError, match=r"other values of loss\.temperature, train\.batch_size;"):
        prepare_run_dir(tmp_path, other, _vocabulary("cube"), resume=True)
    with pytest.raises(RunDirectoryError, match="vocab.json: differs"):
        prepare_run_dir(tmp_path, longer, _vocabulary("sphere"), resume=True)


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(RunDirectoryError, match="not a training run"):
        run_config(None, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="--config is required"):
        run_config(None, tmp_path)


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", CONFIGS[1:])
def test_paper_configs_load_with_the_paper_objective(name):
    config = load_config(f"configs/{name}.yaml")
    assert (config.loss.temperature, config.loss.triplet_weight, config.loss.specificity_weight) == (0.01, 4.0, 11.0)
    assert config.loss.triplet_warmup_epochs == 0
    assert config.data.dataset == name.split("_")[0]
    # The paper's model: no spatial binding, none of its terms.
    assert config.model.binding_axes == 0
    assert (config.loss.relation_swap_weight, config.loss.region_entity_weight) == (0.0, 0.0)
    assert config.loss.relation_readout_weight == 0.0


def test_demo_config_trains_the_binding_on_the_contrastive_term_without_dropout_or_caption_sampling():
    config = load_config("configs/demo.yaml")
    loss, model, augment = config.loss, config.model, config.augment
    assert (loss.temperature, loss.triplet_weight, loss.specificity_weight) == (0.05, 0.0, 0.0)
    assert (model.binding_axes, model.binding_hidden) == (4, 256)
    assert (loss.relation_swap_weight, loss.region_entity_weight, loss.relation_readout_weight) == (1.0, 1.0, 1.0)
    assert (model.region_dropout, model.word_dropout, model.composer_dropout) == (0.0, 0.0, 0.0)
    caption_sampling = dataclasses.asdict(augment)
    assert caption_sampling.pop("region_drop") == 0.05
    assert set(caption_sampling.values()) == {0.0}, caption_sampling
    assert config.data.dataset == "demo"


def test_paper_configs_carry_the_recipe_of_their_encoder():
    for name in CONFIGS[1:]:
        train = load_config(f"configs/{name}.yaml").train
        assert (train.learning_rate, train.warmup_epochs, train.decay_factor) == (5e-4, 1.0, 0.1)
    gru = load_config("configs/f30k_gru.yaml").train
    assert (gru.batch_size, gru.epochs, gru.decay_epochs, gru.weight_decay) == (128, 55, [15], 1e-4)
    assert (gru.image_learning_rate_multiplier, gru.word_learning_rate_multiplier) == (1.0, 1.0)
    for name in ("f30k_bert", "coco_bert"):
        config = load_config(f"configs/{name}.yaml")
        assert config.model.text_encoder == "bert"
        assert (config.train.bert_learning_rate_multiplier, config.train.bert_weight_decay) == (0.1, 0.01)


def test_overrides_apply_after_the_file_and_epochs_flags_last(tmp_path):
    config = run_config("configs/demo.yaml", tmp_path, ["train.batch_size=64", "train.epochs=3"], epochs=5, steps_per_epoch=2)
    assert (config.train.batch_size, config.train.epochs, config.train.steps_per_epoch) == (64, 5, 2)


def test_config_errors_name_the_key_path_and_what_is_allowed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.batch_sise: unknown key; allowed: batch_size, epochs"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"train\.epochs: 'ten' is not int"):
        run_config("configs/demo.yaml", tmp_path, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match=r"data\.dataset: 'mscoco' is not one of 'f30k', 'coco', 'demo'"):
        run_config("configs/demo.yaml", tmp_path, ["data.dataset=mscoco"])


def test_train_command_reports_a_config_error_on_one_line(tmp_path, capsys):
    status = cli.main(
        ["train", "--config", "configs/demo.yaml", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
         "--set", "model.max_entites=3"]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("cora-keras train: error: ") and err.count("\n") == 1
    assert "model.max_entites: unknown key; allowed: embed_size" in err
    assert not (tmp_path / "run").exists()
