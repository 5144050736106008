fn main() {
    std::process::exit(roar_node::cli::main());
}
