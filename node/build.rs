fn main() {
    // With JSON access (`multispace call node.METHOD`).
    multispace_stubgen::Builder::new().json(true).compile("interfaces/control.rs");
}
