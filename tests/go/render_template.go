// Renders a Go text/template (an Ollama Modelfile's TEMPLATE) with the data on stdin, as Ollama does:
// tests/test_export_gguf.py compares the result with the tokenizer's Jinja chat template.
// Usage: go run render_template.go TEMPLATE_FILE < {"Messages": [{"Role": "user", "Content": "..."}]}
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

func main() {
	source, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var data map[string]any
	if err := json.NewDecoder(os.Stdin).Decode(&data); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	tmpl, err := template.New("modelfile").Parse(string(source))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
