//! AFL target: `fuzzing::client_message` on every input AFL makes.

fn main() {
    afl::fuzz!(|data: &[u8]| fuzzing::client_message(data));
}
