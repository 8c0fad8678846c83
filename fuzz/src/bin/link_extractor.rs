//! AFL target: `fuzzing::link_extractor` on every input AFL makes.

fn main() {
    afl::fuzz!(|data: &[u8]| fuzzing::link_extractor(data));
}
