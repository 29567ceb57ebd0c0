fn main() {
    std::process::exit(shoal_cli::run(std::env::args_os()));
}
