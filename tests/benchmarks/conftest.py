import pytest

from tests.verify.conftest import tiny_vlm_dir  # noqa: F401  (a session fixture: the tiny random VLM)


@pytest.fixture
def tiny_vlm_server(tiny_vlm_dir):  # noqa: F811
    """`earl serve judge`'s server around the tiny random VLM, and a client backend for it."""
    import torch

    from earl.serve.judge import JudgeServer
    from earl.verify.chat import OpenAIChatBackend
    from earl.verify.local_vlm import LocalVLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    server = JudgeServer(("127.0.0.1", 0), LocalVLM(tiny_vlm_dir, device="cpu").generate, model_name="tiny",
                         max_batch=8).start()
    yield OpenAIChatBackend(base_url=server.url, timeout=60)
    server.close()
    torch.set_num_threads(threads)
