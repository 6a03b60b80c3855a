"""Speed options: mixed precision from YAML, ``compile: true`` without ``_orig_mod.`` keys, channels_last training.

Mixed precision on CUDA (``16-mixed``, ``bf16-mixed``) has ``gpu``-marked tests; ``bf16-mixed`` also runs on the
CPU (Lightning autocasts to bfloat16 there), so its wiring from the command line is tested everywhere.
"""

import lightning as L
import pytest
import torch
from helpers import quiet_trainer, synthetic_data

from convnext_pl.models import create_model
from convnext_pl.tasks.classification import ImageClassifier
from convnext_pl.training.cli import cli_main


def _tiny_net() -> torch.nn.Module:
    # One block per stage keeps torch.compile's CPU code generation to seconds; the structure is ConvNeXt's.
    return create_model("convnext_atto", num_classes=10, patch_size=2, depths=(1, 1), dims=(16, 32))


class _RecordDtypes(L.Callback):
    """Records the logits' dtype in every training forward and the loss of every step."""

    def __init__(self):
        self.logit_dtypes, self.losses = [], []

    def on_fit_start(self, trainer, pl_module):
        pl_module.net.head.register_forward_hook(lambda m, i, out: self.logit_dtypes.append(out.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_bf16_mixed_from_the_command_line_autocasts_on_the_cpu(tmp_path):
    record = _RecordDtypes()
    cli = cli_main(
        ["--config", "configs/experiment/digits.yaml", "--trainer.precision", "bf16-mixed"]
        + [
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
        ]
        + ["--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    assert cli.trainer.precision == "bf16-mixed"
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert record.logit_dtypes and set(record.logit_dtypes) == {torch.bfloat16}  # matmuls ran in bfloat16
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())  # master weights stay float32
    assert all(torch.isfinite(torch.tensor(record.losses)))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("precision", "dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)]
)
def test_mixed_precision_trains_on_a_gpu(tmp_path, precision, dtype):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    record = _RecordDtypes()
    module = ImageClassifier(create_model("convnext_atto", num_classes=10, patch_size=2), channels_last=True)
    trainer = quiet_trainer(
        tmp_path, limit_val_batches=0, accelerator="gpu", precision=precision, max_steps=4, callbacks=[record]
    )
    trainer.fit(module, synthetic_data(train_size=32))
    assert set(record.logit_dtypes) == {dtype}
    assert all(torch.isfinite(torch.tensor(record.losses)))
    assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.slow
def test_compiled_training_keeps_checkpoint_keys_and_loads_into_an_uncompiled_model(tmp_path):
    compiled = ImageClassifier(_tiny_net(), compile=True)
    trainer = quiet_trainer(tmp_path, limit_val_batches=0, max_steps=2)
    trainer.fit(compiled, synthetic_data(train_size=32))
    assert compiled.net._compiled_call_impl is not None  # the network really ran compiled
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")

    plain = ImageClassifier(_tiny_net())
    saved = torch.load(tmp_path / "compiled.ckpt", weights_only=False)["state_dict"]
    assert not [k for k in saved if "_orig_mod" in k]
    assert list(saved) == list(plain.state_dict())
    plain.load_state_dict(saved)  # strict: every key matches

    # The training batch shape and mode, so the compiled graph is reused rather than compiled again.
    images = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(plain.train()(images), compiled.train()(images), rtol=1e-4, atol=1e-4)


class _RecordStep(L.Callback):
    """Records the memory format of the batch reaching the network, the conv weights' format, loss and gradients."""

    def __init__(self):
        self.batch_channels_last, self.grads, self.loss = [], {}, None

    def on_fit_start(self, trainer, pl_module):
        pl_module.net.register_forward_pre_hook(
            lambda m, args: self.batch_channels_last.append(
                args[0].is_contiguous(memory_format=torch.channels_last)
            )
        )
        self.stem_channels_last = pl_module.net.downsample_layers[0][0].weight.is_contiguous(
            memory_format=torch.channels_last
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = outputs["loss"].detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.net.named_parameters()}


def test_channels_last_training_step_matches_nchw(tmp_path):
    """channels_last converts the weights and every batch; loss and gradients equal the NCHW ones."""
    records = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        module = ImageClassifier(
            create_model("convnext_atto", num_classes=10, patch_size=2), channels_last=channels_last
        )
        records[channels_last] = record = _RecordStep()
        quiet_trainer(tmp_path, limit_val_batches=0, max_steps=1, callbacks=[record]).fit(
            module, synthetic_data(train_size=32)
        )
    nchw, nhwc = records[False], records[True]
    assert (nchw.stem_channels_last, nhwc.stem_channels_last) == (False, True)
    assert set(nchw.batch_channels_last) == {False} and set(nhwc.batch_channels_last) == {True}
    torch.testing.assert_close(nhwc.loss, nchw.loss, rtol=1e-5, atol=1e-6)
    assert nchw.grads.keys() == nhwc.grads.keys()
    for name in nchw.grads:
        torch.testing.assert_close(nhwc.grads[name], nchw.grads[name], rtol=1e-4, atol=1e-6, msg=name)
