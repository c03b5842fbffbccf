fn main() {
    multispace_stubgen::compile("interfaces/table.rs");
    multispace_stubgen::compile("interfaces/peer.rs");
}
