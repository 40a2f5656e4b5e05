# Sourced by .ci/run and scripts/demo.sh: link with mold where it is installed (a warm
# rebuild links several times faster), with the system's linker otherwise. A RUSTFLAGS the
# caller set is kept. Every build of the shared target directory must use the same flags, or
# cargo rebuilds everything.
if [ -z "${RUSTFLAGS+x}" ] && command -v mold >/dev/null; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
