"""Convert every released PaCa-ViT checkpoint into a Hub repo and upload it (see paca_hf.releases.RELEASES).

For each release: take the authors' checkpoint (downloaded from their release URL, or from --checkpoints-dir),
convert it strictly, build the repo (safetensors weights, config with auto_map, image processor, source files for
trust_remote_code, model card), check it (exact file list, bit-exact weights, reload, card metadata, loading as
remote code without paca_hf), and only then create the Hub repo and upload the folder. A release that fails any
step (download, conversion, check or upload) uploads nothing and is reported; the others go on. A summary table
of every release's outcome ends the run, and the exit status is 1 when any failed.

    python scripts/publish_all.py --dry-run     # download, convert and check all; print what would be uploaded
    python scripts/publish_all.py --checkpoints-dir ckpts/ --only pacavit_small_p2cconv_100_0
    python scripts/publish_all.py               # upload everything (token: HF_TOKEN or `hf auth login`)
    python scripts/publish_all.py --list        # the release table (Markdown)
    python scripts/publish_all.py --write-cards model_cards   # every release's card, as uploaded (no checkpoints)
"""

# The command line of scripts/publish_all.py, kept in the package so that it is called and tested as a function.
import argparse
import sys

from .model_card import render_releases_table
from .publishing import publish, summary_table
from .repo import write_release_cards


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoints-dir",
        default=None,
        help="take the checkpoints from this folder (named as in the release URLs) instead of downloading them",
    )
    parser.add_argument("--work-dir", default="outputs/hub", help="downloads and built repos go here")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        default=None,
        help="an official name or repo id to publish (repeatable); default: every release",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="build and check, print the repo ids and files, upload nothing"
    )
    parser.add_argument("--list", action="store_true", help="print the release table (Markdown) and exit")
    parser.add_argument(
        "--write-cards",
        metavar="DIR",
        default=None,
        help="write every release's model card to DIR/<repo name>.md and exit",
    )
    return parser.parse_args(argv)


def main(argv=None, api=None) -> int:
    args = parse_args(argv)
    if args.list:
        print(render_releases_table(), end="")
        return 0
    if args.write_cards:
        for path in write_release_cards(args.write_cards):
            print(f"wrote {path}")
        return 0
    if not args.dry_run and api is None:
        from huggingface_hub import HfApi, get_token

        if get_token() is None:
            print(
                "error: no Hugging Face token; set HF_TOKEN or run `hf auth login` (or use --dry-run)", file=sys.stderr
            )
            return 2
        api = HfApi()

    def log(message: str) -> None:
        print(message, file=sys.stderr if message.startswith("error:") else sys.stdout, flush=True)

    try:
        status = publish(args.only, args.checkpoints_dir, args.work_dir, api=api, dry_run=args.dry_run, log=log)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    print(summary_table(status))
    failed = [name for name, state in status.items() if state.startswith("failed")]
    skipped = [name for name, state in status.items() if state.startswith("skipped")]
    done = len(status) - len(failed) - len(skipped)
    print(
        f"{done} {'checked (dry run)' if args.dry_run else 'uploaded'}, {len(skipped)} skipped, {len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0
