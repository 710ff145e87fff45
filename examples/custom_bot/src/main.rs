//! `custom_bot`: the `perch` program with one more bot kind. Run it as perch:
//! `cargo run -p custom_bot -- --config examples/custom_bot/config.toml`.

fn main() -> std::process::ExitCode {
    perch::Hub::builder()
        .bot_kind::<custom_bot::Standup>("standup")
        .run()
}
