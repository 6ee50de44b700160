// Placeholder: the Tokenizer class of docs/DESIGN.md (owned by the io/tokenizer work).
export {};
