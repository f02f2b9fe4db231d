"""Qwen2.5-Omni / Qwen3-Omni demo: `python app.py [--model auto|tiny|tiny-qwen3-omni|HUB_ID|DIR] [--device cuda|cpu]
[--host H] [--port P]`.

The same file runs on a local machine and on Hugging Face Spaces (ZeroGPU included).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if os.environ.get("SPACE_ID"):  # on Hugging Face Spaces
    import spaces  # noqa: F401  - before torch and CUDA: ZeroGPU patches them at import


def parse_args(argv=None) -> argparse.Namespace:
    from omni_demo.sessions import MAX_TABS

    parser = argparse.ArgumentParser(description="Live voice and video chat with Qwen2.5-Omni or Qwen3-Omni.")
    parser.add_argument(
        "--model",
        default=os.environ.get("OMNI_DEMO_MODEL", "auto"),
        help="auto (Qwen3-Omni-30B-A3B, else Qwen2.5-Omni 7B, else 3B, by free GPU memory; the tiny random "
        "checkpoint without a GPU), tiny, tiny-qwen3-omni, a Hugging Face id such as Qwen/Qwen3-Omni-30B-A3B-Instruct "
        "or Qwen/Qwen2.5-Omni-7B, or a checkpoint directory",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 on Spaces)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--max-active", type=int, default=None, metavar="N",
                        help="answers made together, in one batched step; others wait their turn "
                             "(default: what the cache budget holds, at most 16)")
    parser.add_argument("--cache-gib", type=float, default=None, metavar="GIB",
                        help="memory for the conversations' caches; idle ones give theirs back past it "
                             "(default: 60%% of what is free once the model is loaded)")
    parser.add_argument("--max-tabs", type=int, default=MAX_TABS, metavar="N",
                        help=f"conversations open at once; a tab past it is told the demo is full (default {MAX_TABS})")
    parser.add_argument("--replicas", type=int, default=None, metavar="N",
                        help="run the model as N replicas on a local Ray instance (default with --ray-address: one "
                             "per GPU of the cluster; without a GPU, CPU replicas); needs `pip install ray`")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join this Ray cluster (e.g. auto, or ray://head:10001) and place the replicas on its GPUs")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    args = parse_args(argv)
    from model.inputs.limits import MAX_UPLOAD_BYTES
    from model.loading import LoadError, load_omni
    from omni_demo.ui import build_app

    replicas = None
    try:
        if args.replicas or args.ray_address:  # the model on Ray replicas; this process holds none of its weights
            from omni_demo.replicas import Replicas

            replicas = Replicas.start(args.model, args.replicas, args.ray_address, args.device, args.max_active,
                                      args.cache_gib)
            loaded = load_omni(replicas.source(), device="meta")
        else:
            loaded = load_omni(args.model, device=args.device)
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if replicas is None:
        logging.info("loaded %s", loaded.describe())
    else:
        logging.info("this process holds no weights (%s's processor and voices); the model runs on %d replica(s)",
                     loaded.source, len(replicas.infos()))
    app = build_app(loaded, max_active=args.max_active, cache_gib=args.cache_gib, max_tabs=args.max_tabs,
                    replicas=replicas)
    # Each open tab holds a few threads (its streams and its answer).
    app.demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD_BYTES,
        max_threads=max(80, 3 * args.max_tabs),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
