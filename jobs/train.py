"""Entry point for `ray job submit`: the same command as `revela train`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py --config jobs/configs/smoke-cpu.yaml
"""

from revela.cli import app

if __name__ == "__main__":
    app(["train", *__import__("sys").argv[1:]])
