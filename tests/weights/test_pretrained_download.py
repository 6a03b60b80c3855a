"""Weights by URL, name or Hub id: a real HTTP server on 127.0.0.1 and a Hugging Face cache laid out as the hub does.

Nothing here reaches the internet: the server is the standard library's, the Hub is only its on-disk cache.
"""

import hashlib
import http.server
import io
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from convnext_pl.errors import UserError
from convnext_pl.models import create_model, load_pretrained
from convnext_pl.weights.catalogue import CATALOGUE, Arch, Weights
from convnext_pl.weights.command import main
from convnext_pl.weights.download import hf_cache_dir, torch_cache_file
from convnext_pl.weights.loading import check_architecture


class _Server:
    """Serves ``files`` (path -> bytes); paths in ``cut`` get a full Content-Length but half the body."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.cut else body)
                if self.path in server.cut:
                    self.close_connection = True  # the connection drops mid-transfer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    serving = _Server()
    yield serving
    serving.httpd.shutdown()
    serving.httpd.server_close()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty TORCH_HOME and HF_HOME; online unless a test sets HF_HUB_OFFLINE (conftest sets it for the suite)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


def _official_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)  # the official layout: {"model": state_dict}
    return buffer.getvalue()


TINY = {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}  # a few kB of weights: transfers take no time


def _atto(num_classes: int = 10) -> torch.nn.Module:
    return create_model("convnext_atto", num_classes=num_classes, layer_scale_init_value=0.5, **TINY)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def _cache_listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_url_downloads_once_then_loads_from_the_cache_without_a_request(server, caches):
    source = _atto()
    server.files["/convnext_atto_test.pth"] = _official_bytes(source)
    url = server.url("/convnext_atto_test.pth")
    model = load_pretrained(_atto(), url)
    assert _same(model, source)
    assert torch_cache_file(url) == caches / "torch" / "hub" / "checkpoints" / "convnext_atto_test.pth"
    assert torch_cache_file(url).is_file()
    assert len(server.requests) == 1
    load_pretrained(_atto(), url)
    assert len(server.requests) == 1  # the cached file was used: no second request


def test_cut_off_download_leaves_nothing_in_the_cache(server, caches):
    server.files["/cut.pth"] = _official_bytes(_atto())
    server.cut.add("/cut.pth")
    with pytest.raises(UserError, match="not kept in the cache .an interrupted transfer.*complete"):
        load_pretrained(_atto(), server.url("/cut.pth"))
    assert _cache_listing(caches / "torch") == []  # no partial file the next run would trust


def test_404_is_one_sentence(server, caches):
    with pytest.raises(UserError) as error:
        load_pretrained(_atto(), server.url("/missing.pth"))
    assert "HTTP 404" in str(error.value) and "\n" not in str(error.value)


def test_a_file_that_is_no_checkpoint_is_refused_unread_and_not_kept(server, caches, tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    server.files["/evil.pth"] = pickle.dumps({"model": Payload()}, protocol=2)
    with pytest.raises(UserError, match="not kept in the cache.*weights_only=True"):
        load_pretrained(_atto(), server.url("/evil.pth"))
    assert not marker.exists()  # never unpickled
    assert _cache_listing(caches / "torch") == []


def test_a_known_sha256_is_checked(server, caches, monkeypatch):
    body = _official_bytes(_atto())
    server.files["/hashed.pth"] = body
    _register(monkeypatch, "convnext_atto.test_sha", server.url("/hashed.pth"), sha256="0" * 64)
    with pytest.raises(UserError, match="SHA-256"):
        load_pretrained(_atto(), "convnext_atto.test_sha")
    assert _cache_listing(caches / "torch") == []
    _register(
        monkeypatch,
        "convnext_atto.test_sha",
        server.url("/hashed.pth"),
        sha256=hashlib.sha256(body).hexdigest(),
    )
    load_pretrained(_atto(), "convnext_atto.test_sha")


def _register(
    monkeypatch, name: str, url: str | None, num_classes: int = 10, hub: str | None = None, **extra
):
    entry = Weights(
        name=name,
        task="classification",
        arch=Arch(
            "convnext_pl.models.create_model", {"name": "convnext_atto", "num_classes": num_classes, **TINY}
        ),
        num_classes=num_classes,
        label_set="test",
        image_size=32,
        recipe="test",
        source="test",
        url=url,
        hf_hub_id=hub,
        **extra,
    )
    monkeypatch.setitem(CATALOGUE, name, entry)
    return entry


def test_name_downloads_its_url_and_a_wrong_network_is_refused_before_any_request(
    server, caches, monkeypatch
):
    source = _atto()
    server.files["/atto_named.pth"] = _official_bytes(source)
    _register(monkeypatch, "convnext_atto.test_in10", server.url("/atto_named.pth"))
    assert _same(load_pretrained(_atto(), "convnext_atto.test_in10"), source)
    requests = len(server.requests)
    with pytest.raises(
        UserError, match=r"convnext_atto.test_in10 is a convnext_atto .* configured network is a Con"
    ):
        load_pretrained(create_model("convnext_atto", num_classes=10), "convnext_atto.test_in10")
    assert len(server.requests) == requests


def test_offline_uses_the_cached_file_silently_and_names_url_and_cache_path_when_missing(
    server, caches, monkeypatch
):
    source = _atto()
    server.files["/offline.pth"] = _official_bytes(source)
    url = server.url("/offline.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as error:
        load_pretrained(_atto(), url)
    message = str(error.value)
    assert "offline" in message and url in message and str(torch_cache_file(url)) in message
    assert server.requests == []
    # Put the file where the sentence says: it is used with no request.
    torch_cache_file(url).parent.mkdir(parents=True)
    torch_cache_file(url).write_bytes(server.files["/offline.pth"])
    assert _same(load_pretrained(_atto(), url), source)
    assert server.requests == []


def _write_hf_cache(repo_id: str, filename: str, data: bytes, commit: str = "a" * 40) -> Path:
    """The layout huggingface_hub writes: blobs/<sha256>, refs/main -> commit, snapshots/<commit>/<file> symlink."""
    repo = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    sha = hashlib.sha256(data).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    os.symlink(f"../../blobs/{sha}", snapshot / filename)
    return snapshot / filename


def _timm_atto_safetensors(num_classes: int) -> tuple[bytes, torch.nn.Module]:
    import timm

    reference = timm.create_model("convnext_atto", pretrained=False, num_classes=num_classes)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save(reference.state_dict()), reference.eval()


def test_hf_hub_cache_loads_offline_by_hub_id_and_by_name(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, reference = _timm_atto_safetensors(num_classes=1000)
    _write_hf_cache("timm/convnext_atto.d2_in1k", "model.safetensors", data)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        for source in (
            "hf-hub:timm/convnext_atto.d2_in1k",
            "timm/convnext_atto.d2_in1k",
            "convnext_atto.d2_in1k",
        ):
            model = load_pretrained(create_model("convnext_atto"), source).eval()
            assert (model(x) - expected).abs().max() < 1e-4, source


def test_missing_hub_repository_offline_gives_the_offline_sentence(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as error:
        load_pretrained(create_model("convnext_atto"), "hf-hub:timm/convnext_atto.not_there")
    message = str(error.value)
    assert "offline" in message and str(hf_cache_dir()) in message and "\n" not in message
    with pytest.raises(
        UserError, match="convnext_tiny.in22k .*dl.fbaipublicfiles.com.*hf-hub:timm/convnext_tiny.fb_in22k"
    ):
        with torch.device("meta"):
            tiny = create_model("convnext_tiny", num_classes=10)
        load_pretrained(tiny, "convnext_tiny.in22k", replace_head=True)


def test_22k_head_on_1k_model_is_refused_in_one_sentence_before_download():
    with torch.device("meta"):  # shapes are all the check reads
        tiny, v2_atto = create_model("convnext_tiny"), create_model("convnextv2_atto")
    with pytest.raises(UserError, match=r"ImageNet-22K head \(21841 classes\).*convnext_tiny.in22k_ft_in1k"):
        check_architecture(CATALOGUE["convnext_tiny.in22k"], tiny)
    with pytest.raises(UserError, match="no classifier"):
        check_architecture(CATALOGUE["convnextv2_atto.fcmae"], v2_atto)
    check_architecture(CATALOGUE["convnext_tiny.in22k"], tiny, replace_head=True)
    with pytest.raises(
        UserError, match="convnext_tiny.in1k is a convnext_tiny .*but the configured network is a ConvN"
    ):
        check_architecture(CATALOGUE["convnext_tiny.in1k"], v2_atto)


def test_unknown_name_and_missing_path_are_one_sentence(caches):
    with pytest.raises(UserError, match="not a released weights name.*convnext_tiny.in1k"):
        load_pretrained(_atto(), "convnext_tiny.in2k")
    with pytest.raises(UserError, match="'weights/missing.pth' does not exist"):
        load_pretrained(_atto(), "weights/missing.pth")
    with pytest.raises(UserError, match="neither a file nor a released weights name"):
        load_pretrained(_atto(), "convnext-tiny")


def test_download_command_fills_the_cache_and_list_prints_the_table(server, caches, monkeypatch, capsys):
    server.files["/cli.pth"] = _official_bytes(_atto())
    _register(monkeypatch, "convnext_atto.test_cli", server.url("/cli.pth"))
    assert main(["download", "convnext_atto.test_cli"]) == 0
    assert str(torch_cache_file(server.url("/cli.pth"))) in capsys.readouterr().out
    assert main(["list", "--filter", "convnext_tiny.in22k"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "params", "res", "top-1", "classes", "source"]
    assert table[1].split()[:5] == ["convnext_tiny.in22k", "44.6M", "224", "-", "21841"]
    assert table[2].split()[:5] == ["convnext_tiny.in22k_ft_in1k", "28.6M", "224", "82.9", "1000"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "convnext_atto.d2_in1k"]) == 2
    assert capsys.readouterr().err.startswith("error: convnext_atto.d2_in1k is not in the cache")


def test_a_name_falls_back_to_its_url_when_the_hub_cannot_be_reached(server, caches, monkeypatch):
    # huggingface_hub was imported offline (conftest): every Hub request fails as behind a firewall.
    source = _atto()
    server.files["/fallback.pth"] = _official_bytes(source)
    _register(
        monkeypatch, "convnext_atto.test_fallback", server.url("/fallback.pth"), hub="timm/not_reachable"
    )
    assert _same(load_pretrained(_atto(), "convnext_atto.test_fallback"), source)
    assert server.requests == ["/fallback.pth"]


def _closed_port_url(path: str) -> str:
    """A URL on 127.0.0.1 whose port nothing listens on: a host that cannot be reached, answering at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_a_released_name_without_network_or_cache_is_the_offline_sentence_without_retrying(
    caches, monkeypatch
):
    """Before: 31 s and 12 lines of huggingface_hub's "Retrying in 8s" before the one good line. Now each host is
    asked once, and neither the Hub client nor torch.hub is called when none answers."""
    import huggingface_hub

    import convnext_pl.weights.download as download

    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url(""))
    url = _closed_port_url("/atto.pth")
    _register(monkeypatch, "convnext_atto.test_no_network", url, hub="timm/convnext_atto.no_network")
    asked = []
    real_reachable = download.reachable
    monkeypatch.setattr(download, "reachable", lambda u, **kw: asked.append(u) or real_reachable(u, **kw))
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *a, **kw: pytest.fail("the Hub was called")
    )
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *a, **kw: pytest.fail("torch.hub was called")
    )
    with pytest.raises(UserError) as error:
        load_pretrained(_atto(), "convnext_atto.test_no_network")
    message = str(error.value)
    assert message.startswith("convnext_atto.test_no_network is not in the cache and this machine is offline")
    assert url in message and str(torch_cache_file(url)) in message and "\n" not in message
    assert asked == [os.environ["HF_ENDPOINT"], url]


def test_a_cached_file_of_other_contents_under_a_released_name_is_refused_and_a_good_one_hashed_once(
    server, caches, monkeypatch
):
    import convnext_pl.weights.download as download

    good = _official_bytes(_atto())
    server.files["/released.pth"] = good
    url = server.url("/released.pth")
    _register(monkeypatch, "convnext_atto.test_cached", url, sha256=hashlib.sha256(good).hexdigest())
    target = torch_cache_file(url)
    target.parent.mkdir(parents=True)
    target.write_bytes(_official_bytes(_atto(num_classes=10)))  # other weights of the same shapes
    with pytest.raises(UserError) as error:
        load_pretrained(_atto(), "convnext_atto.test_cached")
    assert str(error.value).startswith(
        f"the cached file {target} is not the released convnext_atto.test_cached"
    )
    assert "python -m convnext_pl.weights download convnext_atto.test_cached" in str(error.value)
    assert target.exists() and server.requests == []  # the user's file is kept; nothing is downloaded over it
    target.write_bytes(good)
    hashed = []
    real_sha256 = download._sha256
    monkeypatch.setattr(download, "_sha256", lambda p: hashed.append(p) or real_sha256(p))
    for _ in range(3):
        load_pretrained(_atto(), "convnext_atto.test_cached")
    assert len(hashed) == 1 and server.requests == []  # hashed on first use, remembered after
