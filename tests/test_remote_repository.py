"""Remote repositories without a network: Triton's URL forms, the filesystem options each SDK
gets, a missing package, and the mirror's rules on an in-memory object store (only changed
objects are fetched; a model whose download fails keeps its old files; removals; warm cache).
The same flows against a real S3 server are in test_remote_s3.py."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from torchtide import cli
from torchtide.repository_remote import (
    RemoteError,
    RemoteRepository,
    RemoteURL,
    default_cache_dir,
    filesystem_options,
    parse_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket/path/to/repo", ("s3", "bucket", "path/to/repo", "", "")),
        ("s3://bucket", ("s3", "bucket", "", "", "")),
        ("s3://bucket//a///b/", ("s3", "bucket", "a/b", "", "")),
        (
            "s3://127.0.0.1:9000/bucket/models",
            ("s3", "bucket", "models", "http://127.0.0.1:9000", ""),
        ),
        ("s3://minio.local:9000/bucket", ("s3", "bucket", "", "http://minio.local:9000", "")),
        (
            "s3://https://minio.local:9000/bucket/m",
            ("s3", "bucket", "m", "https://minio.local:9000", ""),
        ),
        ("s3://http://minio.local:80/bucket/m", ("s3", "bucket", "m", "http://minio.local:80", "")),
        ("gs://bucket/models/", ("gs", "bucket", "models", "", "")),
        ("as://acct/container/models", ("as", "container", "models", "", "acct")),
        ("as://acct.blob.core.windows.net/container", ("as", "container", "", "", "acct")),
    ],
)
def test_url_forms_as_triton_spells_them(url: str, expected: tuple[str, ...]) -> None:
    u = parse_url(url)
    assert (u.scheme, u.bucket, u.prefix, u.endpoint, u.account) == expected
    assert u.url == url


@pytest.mark.parametrize(
    "url", ["s3://", "gs://", "as://acct", "as://acct/", "s3://127.0.0.1:9000/", "s3://bu cket/x"]
)
def test_malformed_urls_are_one_line_errors(url: str) -> None:
    with pytest.raises(RemoteError, match=r"no valid .* in the URL"):
        parse_url(url)


def test_cache_key_tells_endpoints_apart() -> None:
    a = parse_url("s3://bucket/models").cache_key
    b = parse_url("s3://127.0.0.1:9000/bucket/models").cache_key
    assert a != b and a.startswith("s3-bucket-models-")
    assert parse_url("s3://bucket//models/").cache_key == a


def test_default_cache_dir() -> None:
    assert default_cache_dir({"TORCHTIDE_MODEL_CACHE_DIR": "/x"}) == Path("/x")
    assert default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/torchtide/models")
    assert default_cache_dir({}).name == "torchtide-cache"


def test_s3_options_leave_credentials_to_the_sdk_chain() -> None:
    opts = filesystem_options(parse_url("s3://bucket/m"), {})
    assert opts == {"skip_instance_cache": True}  # botocore finds env, profile, web identity...
    opts = filesystem_options(parse_url("s3://10.0.0.1:9000/bucket/m"), {})
    assert opts["endpoint_url"] == "http://10.0.0.1:9000"
    assert opts["config_kwargs"] == {"s3": {"addressing_style": "path"}}


def test_triton_credential_file_longest_prefix_wins(tmp_path: Path) -> None:
    creds = {
        "s3": {
            "": {"key_id": "K0", "secret_key": "S0"},
            "s3://bucket": {"key_id": "K1", "secret_key": "S1", "region": "eu-west-1"},
            "s3://bucket/special": {"profile": "p2", "session_token": "T"},
        },
        "gs": {"": "/keys/default.json", "gs://other": "/keys/other.json"},
        "as": {"as://acct/c": {"account_str": "acct2", "account_key": "AK"}},
    }
    path = tmp_path / "creds.json"
    path.write_text(json.dumps(creds))
    env = {"TRITON_CLOUD_CREDENTIAL_PATH": str(path)}
    o = filesystem_options(parse_url("s3://bucket/models"), env)
    assert (o["key"], o["secret"], o["client_kwargs"]) == ("K1", "S1", {"region_name": "eu-west-1"})
    o = filesystem_options(parse_url("s3://bucket/special/x"), env)
    assert (o["profile"], o["token"]) == ("p2", "T") and "key" not in o
    assert filesystem_options(parse_url("s3://elsewhere/m"), env)["key"] == "K0"
    assert filesystem_options(parse_url("gs://bucket/m"), env)["token"] == "/keys/default.json"
    assert filesystem_options(parse_url("gs://other/m"), env)["token"] == "/keys/other.json"
    o = filesystem_options(parse_url("as://acct/c/models"), env)
    assert (o["account_name"], o["account_key"]) == ("acct2", "AK")
    path.write_text("{not json")
    with pytest.raises(RemoteError, match=r"TRITON_CLOUD_CREDENTIAL_PATH .* cannot be read"):
        filesystem_options(parse_url("s3://bucket/m"), env)


def test_azure_options_follow_triton_variables() -> None:
    url = parse_url("as://acct.blob.core.windows.net/c/m")
    assert filesystem_options(url, {}) == {
        "skip_instance_cache": True,
        "account_name": "acct",
        "anon": False,  # adlfs would be anonymous; this makes it use DefaultAzureCredential
    }
    o = filesystem_options(url, {"AZURE_STORAGE_ACCOUNT": "other", "AZURE_STORAGE_KEY": "k"})
    assert (o["account_name"], o["account_key"]) == ("other", "k") and "anon" not in o
    o = filesystem_options(
        url, {"AZURE_STORAGE_AUTH_TYPE": "managed_identity", "AZURE_STORAGE_CLIENT_ID": "cid"}
    )
    assert o["credential"] == ("azure-identity", "managed_identity", "cid")
    assert "anon" not in filesystem_options(url, {"AZURE_STORAGE_ANON": "true"})


@pytest.mark.parametrize(
    ("url", "package", "extra"),
    [
        ("gs://bucket/m", "gcsfs", "gcs"),
        ("as://a/c/m", "adlfs", "azure"),
        ("s3://b/m", "s3fs", "s3"),
    ],
)
def test_missing_package_is_a_clear_error(
    url: str, package: str, extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    repo = RemoteRepository(url, tmp_path)
    assert not repo.sync() and not repo.usable
    assert repo.error == (
        f"model repository '{url}' needs the Python package '{package}': "
        f"pip install 'torchtide[{extra}]'"
    )


def test_serve_refuses_a_remote_repository_without_its_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    try:
        code = cli.main(["serve", "--model-repository=gs://bucket/models"])
    finally:
        logging.getLogger("torchtide").propagate = True
        logging.getLogger("torchtide").handlers.clear()
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "model repository 'gs://bucket/models' needs the Python package 'gcsfs'" in err
    assert "Traceback" not in err


def test_serve_rejects_a_malformed_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--model-repository=s3://127.0.0.1:9000/"])
    assert e.value.code == cli.EXIT_USAGE
    assert "model repository 's3://127.0.0.1:9000/': no valid bucket in the URL" in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------------------------- the mirror


class FakeStore:
    """An object store as fsspec shows one: find() with ETags, get_file() that can fail."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets: list[str] = []
        self.fail: set[str] = set()
        self.listings = 0

    def put(self, name: str, data: bytes | str) -> None:
        self.objects[name] = data.encode() if isinstance(data, str) else data

    def invalidate_cache(self) -> None:
        pass

    def find(self, root: str, detail: bool = False) -> dict[str, dict[str, Any]]:
        self.listings += 1
        return {
            n: {"ETag": f'"{hashlib.md5(d).hexdigest()}"', "size": len(d), "type": "file"}
            for n, d in self.objects.items()
            if n.startswith(root.rstrip("/") + "/")
        }

    def get_file(self, rpath: str, lpath: str) -> None:
        if rpath in self.fail:
            raise ConnectionResetError(f"connection reset while reading {rpath}")
        self.gets.append(rpath)
        Path(lpath).write_bytes(self.objects[rpath])


def fake_repo(store: FakeStore, cache: Path) -> RemoteRepository:
    def open_fs(url: RemoteURL) -> FakeStore:
        return store

    return RemoteRepository("s3://bucket/repo", cache, open_fs=open_fs)


def seed(store: FakeStore) -> None:
    store.put("bucket/repo/a/config.pbtxt", "a config")
    store.put("bucket/repo/a/1/model.py", "a v1")
    store.put("bucket/repo/a/2/model.py", "a v2")
    store.put("bucket/repo/a/2/weights.bin", b"\0" * 1000)
    store.put("bucket/repo/b/1/model.onnx", b"b v1")


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_only_changed_objects_are_fetched_and_the_cache_survives_a_restart(tmp_path: Path) -> None:
    store = FakeStore()
    seed(store)
    repo = fake_repo(store, tmp_path)
    assert repo.sync() and repo.usable and repo.error == ""
    assert len(store.gets) == 5 and repo.stats.downloads == 5
    assert files(repo.local)["a/2/model.py"] == b"a v2"
    assert repo.local == tmp_path / parse_url("s3://bucket/repo").cache_key / "models"

    assert repo.sync() and len(store.gets) == 5  # no change: a listing, no GET
    v1 = (repo.local / "a" / "1").stat().st_ino
    weights = (repo.local / "a" / "2" / "weights.bin").stat()

    store.put("bucket/repo/a/2/model.py", "a v2, changed")
    assert repo.sync()
    assert store.gets[5:] == ["bucket/repo/a/2/model.py"]  # one object, not its folder
    assert files(repo.local)["a/2/model.py"] == b"a v2, changed"
    assert (repo.local / "a" / "1").stat().st_ino == v1  # the other version was not touched
    kept = (repo.local / "a" / "2" / "weights.bin").stat()  # the same file, linked, not copied
    assert (kept.st_ino, kept.st_mtime_ns) == (weights.st_ino, weights.st_mtime_ns)

    restarted = fake_repo(store, tmp_path)  # a new process on the same cache folder
    assert restarted.sync() and restarted.stats.downloads == 0 and len(store.gets) == 6

    (repo.local / "b" / "1" / "model.onnx").write_bytes(b"damaged!")  # size no longer matches
    assert restarted.sync() and store.gets[6:] == ["bucket/repo/b/1/model.onnx"]
    assert files(repo.local)["b/1/model.onnx"] == b"b v1"


def test_a_failed_download_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    store = FakeStore()
    seed(store)
    repo = fake_repo(store, tmp_path)
    assert repo.sync()
    before = files(repo.local)
    store.put("bucket/repo/a/config.pbtxt", "a config, new")
    store.put("bucket/repo/a/2/weights.bin", b"\1" * 1000)
    store.put("bucket/repo/b/1/model.onnx", b"b v1, new")
    store.fail = {"bucket/repo/a/2/weights.bin"}
    assert not repo.sync()
    assert repo.error == (
        "model repository 's3://bucket/repo' could not be synced: model 'a': "
        "ConnectionResetError: connection reset while reading bucket/repo/a/2/weights.bin"
    )
    after = files(repo.local)
    assert {k: v for k, v in after.items() if k.startswith("a/")} == {
        k: v for k, v in before.items() if k.startswith("a/")
    }  # neither the new config nor half of version 2
    assert after["b/1/model.onnx"] == b"b v1, new"  # the other model went on
    assert repo.usable  # the listing worked: what the mirror holds is served
    assert not list((repo.entry / "staging").glob("*"))

    store.fail = set()
    assert repo.sync() and repo.error == ""
    assert files(repo.local)["a/2/weights.bin"] == b"\1" * 1000
    assert files(repo.local)["a/config.pbtxt"] == b"a config, new"


def test_removed_objects_versions_and_models_leave_the_mirror(tmp_path: Path) -> None:
    store = FakeStore()
    seed(store)
    store.put("bucket/repo/b/labels.txt", "x")
    repo = fake_repo(store, tmp_path)
    assert repo.sync()
    (repo.local / "a" / "1" / "__pycache__").mkdir()  # what an import leaves is not a version
    del store.objects["bucket/repo/a/2/model.py"]
    del store.objects["bucket/repo/a/2/weights.bin"]
    del store.objects["bucket/repo/b/labels.txt"]
    assert repo.sync()
    assert sorted(files(repo.local)) == ["a/1/model.py", "a/config.pbtxt", "b/1/model.onnx"]
    assert not (repo.local / "a" / "2").exists()
    del store.objects["bucket/repo/b/1/model.onnx"]
    assert repo.sync() and not (repo.local / "b").exists()
    assert repo.stats.removed == 3  # a/2, b/labels.txt, then b


def test_an_empty_or_unreadable_listing_keeps_the_last_mirror(tmp_path: Path) -> None:
    store = FakeStore()
    repo = fake_repo(store, tmp_path)
    assert not repo.sync() and not repo.usable
    assert repo.error == (
        "model repository 's3://bucket/repo' is unavailable: no objects found under it"
    )
    seed(store)
    assert repo.sync() and repo.usable
    store.objects.clear()  # a wrong permission or an outage looks like this: keep serving
    assert not repo.sync() and repo.usable
    assert "a/1/model.py" in files(repo.local)


def test_unsafe_object_names_are_skipped(tmp_path: Path) -> None:
    store = FakeStore()
    seed(store)
    store.put("bucket/repo/a/../../escape", "x")
    store.put("bucket/repo/a/1/./model.py", "y")
    repo = fake_repo(store, tmp_path)
    assert repo.sync()
    assert not (tmp_path / "escape").exists() and not (repo.entry / "escape").exists()
    assert files(repo.local)["a/1/model.py"] == b"a v1"


def test_explicit_sync_of_one_model_touches_no_other(tmp_path: Path) -> None:
    store = FakeStore()
    seed(store)
    repo = fake_repo(store, tmp_path)
    assert repo.sync(only="b")
    assert sorted(files(repo.local)) == ["b/1/model.onnx"]
    store.put("bucket/repo/b/1/model.onnx", "b v2")
    assert repo.sync(only="a") and files(repo.local)["b/1/model.onnx"] == b"b v1"
    assert repo.sync() and files(repo.local)["b/1/model.onnx"] == b"b v2"


def test_an_unwritable_cache_is_a_one_line_error(tmp_path: Path) -> None:
    store = FakeStore()
    seed(store)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    repo = fake_repo(store, blocker)
    assert not repo.sync() and not repo.usable
    assert repo.error.startswith(f"model cache '{repo.entry}' cannot be used: ")
