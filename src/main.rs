//! The `perch` program: the command line in `perch::cli` with the built-in bot kinds.
//! A user's own binary is the same line with `.bot_kind::<TheirBot>("their_kind")`.

/// mimalloc instead of glibc's malloc. sled frees its tree nodes on whichever thread
/// reclaims them, and glibc then waits for the arena lock of the thread that allocated
/// them: under load a quarter of perch's context switches were those waits, with the
/// CPU half idle. mimalloc frees across threads without a lock (bench/README.md: about
/// +40 % durable events/s). Built with `no_thp` so it does not ask for transparent huge
/// pages, which tripled idle RSS (63 MiB instead of 19).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    perch::Hub::builder().run()
}
