"""``transprune-serve``, the command: user errors are one line and exit 2 before anything loads;
the server it starts answers the openai client (plain and streamed) with exactly what
``transprune-run --json`` prints for the same image and prompt; SIGTERM lets the request in
flight finish, refuses new connections and exits 0."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import io
import json
import socket
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the tests talk to the server with the openai client (dev extra)")

from transprune.cli import run as run_cli  # noqa: E402
from transprune.cli import serve  # noqa: E402


def _load_serving():
    """tests/runtime/server/serving.py (test folders are not packages, so it is loaded by path)."""
    path = Path(__file__).resolve().parents[2] / "runtime" / "server" / "serving.py"
    spec = importlib.util.spec_from_file_location("transprune_tests_serving", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


serving = _load_serving()


def test_the_server_imports_without_torch_or_transformers():
    # what a Jetson image with only the serve extra looks like to Python
    code = textwrap.dedent("""
        import importlib.abc, sys

        class Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "transformers", "onnxscript", "safetensors"}:
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, Blocked())
        import transprune.cli.serve, transprune.runtime.server, transprune.runtime.server.app
        import transprune.runtime.chat_template
        transprune.runtime.chat_template.ChatTemplate("{{ messages[0].role }}")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("argv, phrases", [
    (["/nonexistent/build"], ["does not exist"]),
    (["BUILD", "--max-batch", "0"], ["--max-batch 0", ">= 1"]),
    (["BUILD", "--max-image-bytes", "0"], ["--max-image-bytes 0"]),
    (["BUILD", "--request-timeout-s", "0"], ["--request-timeout-s"]),
    (["BUILD", "--port", "70000"], ["--port 70000"]),
    (["BUILD", "--backend", "torch", "--provider", "cuda"], ["--provider", "onnxruntime"]),
])
def test_user_errors_are_one_line_and_exit_2(paper_build, capsys, argv, phrases):
    argv = [str(paper_build[0]) if arg == "BUILD" else arg for arg in argv]
    assert serve.main([*argv, "--port", "0"] if "--port" not in argv else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("transprune-serve: error: ") and "\n" not in err and "Traceback" not in err
    for phrase in phrases:
        assert phrase in err


def test_a_port_in_use_is_a_clear_error(paper_build, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main([str(paper_build[0]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pick another --port" in err


@pytest.fixture(scope="module")
def server(paper_build, tmp_path_factory):
    process = serving.ServerProcess(paper_build[0], tmp_path_factory.mktemp("serve-cli") / "server.log")
    yield process
    process.close()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "noise.png"
    path.write_bytes(serving.noise_png(120, 80, 5))
    return path


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_the_openai_client_gets_what_transprune_run_prints(paper_build, server, image_file, stream):
    prompt = "What is in the picture?"
    out = io.StringIO()
    with redirect_stdout(out):
        assert run_cli.main([str(paper_build[0]), "--image", str(image_file), "--prompt", prompt,
                             "--max-new-tokens", "8", "--threads", "1", "--json"]) == 0
    expected = json.loads(out.getvalue())
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
    request = dict(model=serving.MODEL, messages=[serving.user(image_file.read_bytes(), prompt)], max_tokens=8,
                   temperature=0, extra_body={"transprune": {"return_tokens": True, "return_kept": True}})
    if stream:
        chunks = [chunk.to_dict() for chunk in client.chat.completions.create(stream=True, **request)]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        extension = chunks[-1]["transprune"]
    else:
        response = client.chat.completions.create(**request).to_dict()
        text, extension = response["choices"][0]["message"]["content"], response["transprune"]
    assert (text, extension["tokens"]) == (expected["text"], expected["tokens"])
    assert (extension["image_tokens"], extension["kept"]) == (expected["image_tokens"], expected["kept"])


def test_sigterm_finishes_the_request_in_flight_then_exits_0(server, image_file):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.post, serving.body(image_file.read_bytes(), "Describe it.", max_tokens=300))
        server.wait_for(lambda m: m["transprune_running_requests"] == 1, what="the request to start")
        code, stdout = server.terminate()
        status, _, answer = in_flight.result(timeout=30)
    assert status == 200 and answer["usage"]["completion_tokens"] == 300
    assert code == 0 and "stopped on SIGTERM" in stdout
    assert server.get("/health")[0] == 0  # nothing listens any more
    assert "Traceback" not in server.log()
