//! AFL target: `fuzzing::url_normalizer` on every input AFL makes.

fn main() {
    afl::fuzz!(|data: &[u8]| fuzzing::url_normalizer(data));
}
