use clap::Parser;

fn main() {
    // Called as `kubectl-snapcrypt` (kubectl's plugin name): the `kubectl` verbs.
    let args = snapcrypt::cli::kubectl::plugin_args(std::env::args_os().collect());
    let cli = snapcrypt::cli::Cli::parse_from(args);
    std::process::exit(snapcrypt::cli::run(cli));
}
