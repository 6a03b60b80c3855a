"""ImageClassifier: peak lr scaling, layer decay in the optimizer, Mixup, EMA, checkpoints, resume."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers import atto_classifier, quiet_trainer, synthetic_data

from convnext_pl.errors import UserError
from convnext_pl.models import create_model
from convnext_pl.tasks.classification import ImageClassifier
from convnext_pl.training.callbacks import EMA


class _RecordLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_lr_at_end_of_warmup_is_the_peak_scaled_to_the_effective_batch(tmp_path):
    record = _RecordLR()
    module = atto_classifier(lr=4e-3, lr_reference_batch=4096, warmup_steps=3, layer_decay=0.8)
    trainer = quiet_trainer(tmp_path, max_steps=5, accumulate_grad_batches=2, callbacks=[record])
    trainer.fit(module, synthetic_data(batch_size=8))
    peak = 4e-3 * (8 * 1 * 2) / 4096  # per-device batch x devices x accumulation
    assert module._schedule_info["effective_batch_size"] == 16
    assert module._schedule_info["peak_lr"] == pytest.approx(peak)
    groups = trainer.optimizers[0].param_groups
    after_warmup = record.lrs[3 * 2]  # optimizer step 3 starts at batch 6 with accumulation 2
    for lr, group in zip(after_warmup, groups, strict=True):
        assert lr == pytest.approx(peak * group["lr_scale"])  # layer decay really reaches the optimizer
    assert len({round(g["lr_scale"], 12) for g in groups}) > 3
    assert record.lrs[0][0] == 0.0  # warm-up starts from 0


def test_mixup_makes_soft_targets_and_odd_batches_are_refused():
    module = atto_classifier(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    mixed, soft = module.mixup(images.clone(), targets)  # timm mixes in place
    assert soft.shape == (4, 10)
    assert torch.allclose(soft.sum(dim=1), torch.ones(4))
    assert (soft > 0).sum(dim=1).min() >= 2  # mixed/smoothed: never a one-hot target
    assert not torch.equal(mixed, images)
    with pytest.raises(UserError, match="odd batch of 3"):
        module.training_step((torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])), 0)


def test_class_count_mismatch_between_data_and_model_is_an_error(tmp_path):
    module = atto_classifier()
    with pytest.raises(UserError, match="data has 7 classes but the classification network has 10"):
        quiet_trainer(tmp_path, max_steps=1).fit(module, synthetic_data(num_classes=7))


def test_the_class_count_check_every_task_inherits_names_both_sides_and_where_to_fix_it():
    # The base's sentence, in the detector's words (it counts object classes).
    from convnext_pl.tasks.detection import MaskRCNNDetector

    module = MaskRCNNDetector.__new__(MaskRCNNDetector)
    L.LightningModule.__init__(module)
    module.num_classes = 10
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(num_classes=7))
    with pytest.raises(UserError) as error:
        module.refuse_another_class_count()
    assert str(error.value) == (
        "The data has 7 object classes but the detection network has 10; remove num_classes from the model's "
        "net config (it follows the data) or set it to 7."
    )
    module.num_classes = 7
    module.refuse_another_class_count()  # the same count: nothing to say
    module._trainer = SimpleNamespace(datamodule=None)  # fit(model) without a DataModule: nothing to compare
    module.refuse_another_class_count()


def test_ema_weights_differ_from_raw_and_both_are_validated(tmp_path):
    ema = EMA(decay=0.5)
    module = atto_classifier(lr=1e-2)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[ema])
    trainer.fit(module, synthetic_data(train_size=32))  # 4 steps, then the end-of-epoch validation
    metrics = trainer.callback_metrics
    assert {"val/acc1", "val_ema/acc1", "val/loss", "val_ema/loss"} <= set(metrics)
    raw = dict(ema._average_model.module.net.named_parameters())
    # At the end of fit Lightning copies the EMA into the model; the logged raw and EMA losses differed before that.
    assert metrics["val/loss"] != metrics["val_ema/loss"]
    assert all(torch.equal(p, raw[n]) for n, p in module.net.named_parameters())


def test_checkpoint_round_trip_gives_the_same_logits(tmp_path):
    module = atto_classifier()
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(module, synthetic_data())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = ImageClassifier.load_from_checkpoint(
        path, net=create_model("convnext_atto", num_classes=10, patch_size=2)
    )
    x = torch.randn(2, 3, 32, 32)
    module.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(module(x), restored(x))


def test_fit_resumed_from_last_checkpoint_continues_the_step_count(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = quiet_trainer(
        tmp_path,
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(tmp_path, save_last=True)],
    )
    first.fit(atto_classifier(), synthetic_data())
    assert first.global_step == 8  # 64 images / batch 8
    second = quiet_trainer(
        tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ModelCheckpoint(tmp_path)]
    )
    resumed = atto_classifier()
    resumed.accept_changed_settings = True  # 2 epochs instead of 1: continue the checkpoint's schedule
    second.fit(resumed, synthetic_data(), ckpt_path=tmp_path / "last.ckpt")
    assert second.global_step == 16
    assert second.current_epoch == 2


def test_channels_last_network_and_batches_give_the_nchw_outputs():
    torch.manual_seed(0)
    plain = atto_classifier().eval()
    fast = atto_classifier(channels_last=True).eval()
    fast.net.load_state_dict(plain.net.state_dict())
    fast.configure_model()
    assert fast.net.downsample_layers[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
