fn main() {
    multispace_stubgen::compile("interfaces/calc.rs");
}
