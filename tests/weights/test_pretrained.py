"""load_pretrained: official, timm and Lightning checkpoints load exactly; each mistake is one clear error."""

import os
import pickle

import pytest
import timm
import torch
from helpers import quiet_trainer, synthetic_data
from safetensors.torch import save_file

from convnext_pl.errors import UserError
from convnext_pl.models import create_model, load_pretrained
from convnext_pl.tasks.classification import ImageClassifier
from convnext_pl.weights.loading import to_official_names


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _save(state: dict, path) -> None:
    if str(path).endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save(state, path)


def _perturbed_timm_model(name: str, num_classes: int = 10) -> torch.nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    # Move every tensor away from its init: with layer scale 1e-6 and GRN at zero each block is nearly the
    # identity, and LayerNorms at ones/zeros are interchangeable, so a wrong mapping could go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize(
    "name, filenames",
    [
        ("convnext_tiny", ["weights.pth", "model.safetensors"]),
        # atto..nano: timm's 1x1-conv MLP, weights (out, in, 1, 1) -> Linear (out, in)
        ("convnext_atto", ["weights.pth", "model.safetensors"]),
        # V2: GRN weight/bias (C,) -> gamma/beta (1, 1, 1, C)
        ("convnextv2_atto", ["pytorch_model.bin", "model.safetensors"]),
    ],
)
def test_timm_weights_reproduce_timm_logits(name, filenames, tmp_path):
    reference = _perturbed_timm_model(name)
    x = torch.randn(2, 3, 64, 64)
    expected = _logits(reference, x)
    model = create_model(name, num_classes=10)
    assert (_logits(model, x) - expected).abs().max() > 0.1  # before loading: the comparison can fail
    for filename in filenames:
        _save(reference.state_dict(), tmp_path / filename)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()  # forget the previous file
        load_pretrained(model, tmp_path / filename)
        assert (_logits(model, x) - expected).abs().max() < 1e-4, filename


def test_file_format_is_read_from_the_content_not_the_name(tmp_path):
    source = create_model("convnext_atto", num_classes=10, layer_scale_init_value=0.5)
    save_file(source.state_dict(), tmp_path / "really_safetensors.pth")
    torch.save(source.state_dict(), tmp_path / "really_torch.safetensors")
    x = torch.randn(1, 3, 32, 32)
    for filename in ("really_safetensors.pth", "really_torch.safetensors"):
        model = load_pretrained(create_model("convnext_atto", num_classes=10), tmp_path / filename)
        assert torch.equal(_logits(model, x), _logits(source, x))


def test_timm_names_map_to_official_names_and_shapes():
    timm_state = {
        "stem.0.weight": torch.zeros(40, 3, 4, 4),
        "stages.2.downsample.1.weight": torch.zeros(160, 80, 2, 2),
        "stages.1.blocks.0.gamma": torch.zeros(80),
        "stages.1.blocks.0.conv_dw.weight": torch.zeros(80, 1, 7, 7),
        "stages.1.blocks.0.mlp.fc1.weight": torch.zeros(320, 80, 1, 1),
        "stages.1.blocks.0.mlp.grn.weight": torch.zeros(320),
        "stages.1.blocks.0.mlp.grn.bias": torch.zeros(320),
        "stages.1.blocks.0.mlp.fc2.weight": torch.zeros(80, 320),
        "head.norm.bias": torch.zeros(320),
        "head.fc.weight": torch.zeros(10, 320),
    }
    official = {k: tuple(v.shape) for k, v in to_official_names(timm_state).items()}
    assert official == {
        "downsample_layers.0.0.weight": (40, 3, 4, 4),
        "downsample_layers.2.1.weight": (160, 80, 2, 2),
        "stages.1.0.gamma": (80,),
        "stages.1.0.dwconv.weight": (80, 1, 7, 7),
        "stages.1.0.pwconv1.weight": (320, 80),
        "stages.1.0.grn.gamma": (1, 1, 1, 320),
        "stages.1.0.grn.beta": (1, 1, 1, 320),
        "stages.1.0.pwconv2.weight": (80, 320),
        "norm.bias": (320,),
        "head.weight": (10, 320),
    }


@pytest.mark.parametrize("wrapper", ["model", "model_ema", "state_dict"])
def test_official_checkpoint_loads_exactly(wrapper, tmp_path):
    torch.manual_seed(1)
    source = create_model("convnext_atto", num_classes=10, layer_scale_init_value=0.5)
    torch.save({wrapper: source.state_dict()}, tmp_path / "official.pth")
    torch.manual_seed(2)
    model = load_pretrained(create_model("convnext_atto", num_classes=10), tmp_path / "official.pth")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(model, x), _logits(source, x))


def test_official_isotropic_checkpoint_loads_exactly(tmp_path):
    # Official isotropic names: stem.*, blocks.{i}.*, norm.*, head.* (no timm counterpart exists).
    torch.manual_seed(1)
    source = create_model("convnext_iso_small", num_classes=10)
    torch.save({"model": source.state_dict()}, tmp_path / "iso.pth")
    model = load_pretrained(create_model("convnext_iso_small", num_classes=10), tmp_path / "iso.pth")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(_logits(model, x), _logits(source, x))


def test_lightning_checkpoint_written_by_the_trainer_loads_into_the_bare_network(tmp_path):
    module = ImageClassifier(create_model("convnext_atto", num_classes=4), lr=1e-2)
    data = synthetic_data(num_classes=4, train_size=8, val_size=4, batch_size=4)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    model = load_pretrained(create_model("convnext_atto", num_classes=4), tmp_path / "last.ckpt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(model, x), _logits(module.net, x))


@pytest.mark.parametrize("prefix", ["net.", "net._orig_mod.", "module.", "_orig_mod."])
def test_wrapper_prefixes_are_stripped(prefix, tmp_path):
    source = create_model("convnext_atto", num_classes=10, layer_scale_init_value=0.5)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    if prefix.startswith("net."):
        state["train_loss.total"] = torch.zeros(())  # other LightningModule state is not the network's
    torch.save({"state_dict": state, "epoch": 3, "global_step": 10}, tmp_path / "wrapped.ckpt")
    model = load_pretrained(create_model("convnext_atto", num_classes=10), tmp_path / "wrapped.ckpt")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(_logits(model, x), _logits(source, x))


def test_weights_of_another_architecture_name_the_first_key_and_both_shapes(tmp_path):
    torch.save({"model": create_model("convnext_atto").state_dict()}, tmp_path / "atto.pth")
    with pytest.raises(
        UserError, match=r"'downsample_layers\.0\.0\.weight'.*\(40, 3, 4, 4\).*\(96, 3, 4, 4\)"
    ):
        load_pretrained(create_model("convnext_tiny"), tmp_path / "atto.pth")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = create_model("convnext_atto", num_classes=10).state_dict()
    torch.save({"model": {k: v for k, v in state.items() if k != "norm.weight"}}, tmp_path / "missing.pth")
    with pytest.raises(UserError, match=r"'norm\.weight' is missing"):
        load_pretrained(create_model("convnext_atto", num_classes=10), tmp_path / "missing.pth")
    torch.save({"model": {**state, "extra.weight": torch.zeros(3)}}, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"'extra\.weight' in the file is not a parameter"):
        load_pretrained(create_model("convnext_atto", num_classes=10), tmp_path / "extra.pth")


def test_another_head_fails_without_replace_head(tmp_path):
    torch.save({"model": create_model("convnext_atto", num_classes=1000).state_dict()}, tmp_path / "in1k.pth")
    with pytest.raises(UserError, match=r"'head\.weight'.*\(1000, 320\).*\(10, 320\).*replace_head=True"):
        load_pretrained(create_model("convnext_atto", num_classes=10), tmp_path / "in1k.pth")


def test_replace_head_keeps_the_new_head_and_loads_everything_else(tmp_path):
    source = create_model("convnext_atto", num_classes=1000, layer_scale_init_value=0.5)
    torch.save({"model": source.state_dict()}, tmp_path / "in1k.pth")
    model = create_model("convnext_atto", num_classes=10)
    fresh_head = model.head.weight.detach().clone()
    with pytest.warns(UserWarning, match="re-initialised with 10 classes"):
        load_pretrained(model, tmp_path / "in1k.pth", replace_head=True)
    assert torch.equal(model.head.weight, fresh_head)
    for name, tensor in source.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], tensor), name


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "convnext_tiny.pth"
    with pytest.raises(UserError, match="does not exist") as error:
        load_pretrained(create_model("convnext_atto"), path)
    assert str(path) in str(error.value)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_malicious_pickle_is_refused_and_never_runs(writer, tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    payload = {"model": {"head.weight": torch.zeros(1)}, "args": _RunsCodeWhenUnpickled(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)  # the protocol torch.load expects: the refusal is the GLOBAL
    with pytest.raises(UserError, match="not a plain weights file.*weights_only"):
        load_pretrained(create_model("convnext_atto"), path)
    assert not marker.exists()


def test_damaged_or_foreign_files_are_user_errors(tmp_path):
    torch.save(create_model("convnext_atto").state_dict(), tmp_path / "complete.pth")
    data = (tmp_path / "complete.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(UserError, match="could not be read"):
        load_pretrained(create_model("convnext_atto"), tmp_path / "truncated.pth")
    (tmp_path / "text.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a plain weights file"):
        load_pretrained(create_model("convnext_atto"), tmp_path / "text.pth")
    torch.save({"epoch": 3, "best_acc": 0.5}, tmp_path / "no_weights.pth")
    with pytest.raises(UserError, match="holds no state dict"):
        load_pretrained(create_model("convnext_atto"), tmp_path / "no_weights.pth")
