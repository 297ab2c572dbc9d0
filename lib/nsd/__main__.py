"""Command line: ``python -m lib.nsd download --subject 1 --sessions 1-37 --dest DIR [--dry-run]``
(the subject's NSD files and the COCO caption annotations; ``--coco-only`` fetches just the
captions), ``python -m lib.nsd prepare --nsd-root DIR --subject 1 --out DIR`` and
``python -m lib.nsd lexicon --nsd-root DIR --out FILE`` (notebook 06's category vocabulary)."""

from __future__ import annotations

import argparse
import logging
import sys

from lib.nsd.download import (
    COCO_ANNOTATIONS_URL,
    DEFAULT_SESSIONS,
    NSD_BASE_URL,
    DownloadError,
    download_coco_captions,
    download_subject,
    format_size,
    parse_sessions,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib.nsd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch the NSD files and COCO captions the book needs "
                                         "(resumable; complete files are skipped)")
    dl.add_argument("--subject", type=int, help="subject 1-8 (not needed with --coco-only)")
    dl.add_argument("--sessions", default=DEFAULT_SESSIONS,
                    help=f"e.g. 1-37 or 1,2,5-7 (default {DEFAULT_SESSIONS})")
    dl.add_argument("--dest", required=True, help="NSD root to fill")
    dl.add_argument("--dry-run", action="store_true", help="list the files and sizes only")
    dl.add_argument("--no-stimuli", action="store_true",
                    help="skip nsd_stimuli.hdf5 (39 GB). Only for a partial set-up: stage 1 "
                         "(BLIP-2 image features), the vision zoo of 02 and the example images "
                         "read the stimuli from it")
    dl.add_argument("--no-coco", action="store_true",
                    help="skip the COCO caption annotations (needed by preparation, the language "
                         "zoo, stage 2 and the caption metrics: only if you have them already)")
    dl.add_argument("--coco-only", action="store_true",
                    help="fetch only the COCO caption annotations into DEST/annotations")
    dl.add_argument("--coco-instances", action="store_true",
                    help="also extract instances_val2017.json (COCO categories, for the "
                         "category vocabulary of notebook 06)")
    dl.add_argument("--base-url", default=NSD_BASE_URL)
    dl.add_argument("--coco-url", default=COCO_ANNOTATIONS_URL)
    pr = sub.add_parser("prepare", help="write derived/subjXX/prepared.h5")
    pr.add_argument("--nsd-root", required=True)
    pr.add_argument("--subject", type=int, required=True)
    pr.add_argument("--out", required=True, help="output root (files go to OUT/subjXX/)")
    pr.add_argument("--zscore", default="session", choices=["session", "global", "none"])
    pr.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    lx = sub.add_parser("lexicon", help="write the category vocabulary of notebook 06 from "
                                        "COCO's category annotations")
    lx.add_argument("--nsd-root", required=True)
    lx.add_argument("--out", required=True, help="JSON file to write (06's category_lexicon)")
    return parser


def _download_coco(args) -> None:
    if args.dry_run:
        print(f"(would fetch {args.coco_url} and extract captions_*.json into "
              f"{args.dest}/annotations, unless already there)")
        return
    for path in download_coco_captions(args.dest, url=args.coco_url,
                                       instances=args.coco_instances):
        print(f"COCO annotations: {path}")


def _download(args, parser) -> int:
    """The ``download`` command: the subject's NSD files, then (by default) COCO's captions."""
    if args.coco_only and args.no_coco:
        parser.error("--coco-only and --no-coco contradict each other")
    if args.subject is None and not args.coco_only:
        parser.error("--subject is required (or --coco-only to fetch only the captions)")
    failed = []
    try:
        if not args.coco_only:
            files = download_subject(
                args.subject, parse_sessions(args.sessions), args.dest, base_url=args.base_url,
                stimuli=not args.no_stimuli, dry_run=args.dry_run,
            )
            total = sum(f.size or 0 for f in files)
            for f in files:
                print(f"{format_size(f.size):>10}  {f.status.split(':')[0]:<10}  {f.key}")
            print(f"{format_size(total):>10}  total ({len(files)} files)")
            failed = [f for f in files if f.status.startswith("missing")]
            for f in failed:
                print(f"  {f.status}", file=sys.stderr)
        if not args.no_coco:
            _download_coco(args)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "prepare":
        from lib.nsd.prepare import prepare_subject

        print(prepare_subject(args.nsd_root, args.subject, args.out, zscore=args.zscore,
                              dtype=args.dtype))
        return 0

    if args.command == "lexicon":
        from lib.nsd.coco import write_coco_lexicon

        try:
            print(write_coco_lexicon(args.nsd_root, args.out))
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0

    return _download(args, parser)


if __name__ == "__main__":
    sys.exit(main())
