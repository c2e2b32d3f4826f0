"""``trainer.gradient_checkpointing`` holds during ``fit`` only (the model's own flags are restored), and
``trainer.sharding`` is validated and is a no-op on one process."""

from __future__ import annotations

import pytest

from hybridtune.config import ConfigError, load_config
from hybridtune.trainers import Trainer, TrainerCallback
from hybridtune.trainers.memory import checkpointing_flags, gradient_checkpointing


def test_checkpointing_is_on_inside_the_block_and_restored_after(th):
    model = th.lora_model(spiking=True, threshold=0.02)
    assert checkpointing_flags(model) == (False, False)
    with gradient_checkpointing(model, True):
        assert checkpointing_flags(model) == (True, True)
    assert checkpointing_flags(model) == (False, False)
    with gradient_checkpointing(model, False):
        assert checkpointing_flags(model) == (False, False)


def test_a_model_the_user_set_to_checkpoint_keeps_its_setting(th):
    model = th.lora_model(spiking=True, threshold=0.02)
    hf = model.base_model.model
    hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    with gradient_checkpointing(model, True):
        assert checkpointing_flags(model)[0]
    assert checkpointing_flags(model)[0]  # not switched off behind the user's back


class _Seen(TrainerCallback):
    def __init__(self):
        self.flags = []

    def on_step_end(self, trainer, step, logs):
        self.flags.append(checkpointing_flags(trainer.unwrapped)[0])


@pytest.mark.parametrize("enabled", [False, True])
def test_fit_applies_the_option_and_leaves_the_model_as_it_was(tmp_path, th, enabled):
    model = th.lora_model(spiking=True, threshold=0.02)
    model.eval()
    seen = _Seen()
    cfg = th.run_config(tmp_path, steps=2, gradient_checkpointing=enabled)
    trainer = Trainer(model, cfg, train_data=th.pattern_blocks(16), callbacks=[seen])
    assert checkpointing_flags(model) == (False, False)  # building the trainer changes nothing
    trainer.fit()
    assert seen.flags == [enabled, enabled]
    assert checkpointing_flags(model) == (False, False) and not model.training


def test_sharding_is_validated():
    assert load_config(None, ["trainer.sharding=fsdp"]).trainer.sharding == "fsdp"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["trainer.sharding=zero3"])
    assert "trainer.sharding" in str(err.value) and "'fsdp'" in str(err.value)


def test_fsdp_on_one_process_trains_unsharded(tmp_path, th, capsys):
    cfg = th.run_config(tmp_path, steps=1, sharding="fsdp")
    trainer = Trainer(th.lora_model(), cfg, train_data=th.pattern_blocks(8))
    assert not trainer.sharded
    assert "nothing to shard" in capsys.readouterr().out
    assert trainer.fit()["steps"] == 1
