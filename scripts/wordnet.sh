#!/usr/bin/env bash
# WordNet 3.0 for the synonym-based text corruptions (SR, RI), installed offline from
# Debian's packages — nltk.download() needs the internet, apt's registry does not.
#
# Fetches `wordnet-base` (the database) and `wordnet-sense-index` (index.sense) with
# `apt-get download`, unpacks them with `dpkg-deb -x` (no system-wide install, no root
# needed when apt's package lists exist) and lays them out as an NLTK_DATA directory:
#   $QSHIFT_NLTK_DATA/corpora/wordnet/{data,index}.{noun,verb,adj,adv}, *.exc,
#   index.sense, cntlist.rev and lexnames
# `lexnames` (the 45 lexicographer files, lexnames(5WN)) is not shipped as a file by
# Debian but nltk's reader needs it; it is written here from the documented table.
# When Debian's wordnet-base is already installed system-wide, /usr/share/wordnet is used.
#
#   QSHIFT_NLTK_DATA  where to install (default ~/.cache/qshift/nltk_data; the code looks
#                     there by default, so NLTK_DATA need not be set)
# Idempotent: returns at once when the installation is complete.
set -euo pipefail
DEST="${QSHIFT_NLTK_DATA:-$HOME/.cache/qshift/nltk_data}"
WN="$DEST/corpora/wordnet"
FILES=(data.noun data.verb data.adj data.adv index.noun index.verb index.adj index.adv
       noun.exc verb.exc adj.exc adv.exc index.sense cntlist.rev)

complete() {
  for f in "${FILES[@]}" lexnames; do [ -s "$WN/$f" ] || return 1; done
}
if complete; then
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
src=/usr/share/wordnet
if ! { [ -s "$src/data.noun" ] && [ -s "$src/index.sense" ]; }; then
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
    echo "wordnet: apt-get/dpkg-deb not found (not a Debian-like system). Install WordNet 3.0 for nltk by hand:" \
         "put its database files and a lexnames file in $WN (or set QSHIFT_NLTK_DATA)" >&2
    exit 1
  }
  echo "wordnet: fetching Debian packages wordnet-base wordnet-sense-index"
  fetch() { (cd "$work" && apt-get download -qq wordnet-base wordnet-sense-index 2>/dev/null); }
  if ! fetch; then
    # a fresh container has no package lists yet
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo apt-get update -qq >/dev/null; fi
    fetch || { echo "wordnet: 'apt-get download wordnet-base wordnet-sense-index' failed" \
                    "(no package lists? run 'apt-get update' as root, then this script again)" >&2; exit 1; }
  fi
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
  src="$work/root/usr/share/wordnet"
fi

tmp="$(mktemp -d "$DEST.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$DEST")"; mktemp -d "$DEST.XXXXXX"; })"
mkdir -p "$tmp/corpora/wordnet"
for f in "${FILES[@]}"; do
  [ -s "$src/$f" ] || { echo "wordnet: $src/$f missing from the Debian packages" >&2; rm -rf "$tmp"; exit 1; }
  cp "$src/$f" "$tmp/corpora/wordnet/$f"
done
# lexnames(5WN): "NN<TAB>name<TAB>syntactic category" (1 noun, 2 verb, 3 adjective, 4 adverb)
i=0
for name in adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body \
            noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location \
            noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process \
            noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change \
            verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation \
            verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl; do
  case "$name" in noun.*) cat=1 ;; verb.*) cat=2 ;; adj.*) cat=3 ;; adv.*) cat=4 ;; esac
  printf '%02d\t%s\t%d\n' "$i" "$name" "$cat" >> "$tmp/corpora/wordnet/lexnames"
  i=$((i + 1))
done
[ "$i" = 45 ] || { echo "wordnet: internal error: $i lexnames, expected 45" >&2; exit 1; }
# move into place: only a complete directory ever carries the final name
mkdir -p "$DEST/corpora"
rm -rf "$WN"
mv "$tmp/corpora/wordnet" "$WN"
rm -rf "$tmp"
echo "wordnet: installed WordNet 3.0 in $WN"
