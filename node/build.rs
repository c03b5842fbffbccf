fn main() {
    multispace_stubgen::compile("interfaces/control.rs");
}
