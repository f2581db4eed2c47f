package modelio

import (
	"regexp"
	"strings"
)

// ORTSetup is the line the guides give before their first --verify command: it fetches ONNX
// Runtime the first time (scripts/setup-ort.sh) and points ONNXRUNTIME_LIB at it.
// DocCommands leaves it out of both its results; TestGuidesSetUpORT checks where the guides
// put it and runs it.
const ORTSetup = "export ONNXRUNTIME_LIB=$(scripts/setup-ort.sh)"

// DocCommands returns the commands of a tool in a Markdown page's ```sh blocks: the arguments
// after "go run ./tools/NAME", split on white space (the pages use no quoting), with "out/"
// prefixes pointed at outDir so that a test can run them; others are the lines that are
// neither such commands nor ORTSetup.
func DocCommands(page, tool, outDir string) (cmds [][]string, others []string) {
	for _, b := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(page, -1) {
		for _, line := range strings.Split(strings.TrimSpace(b[1]), "\n") {
			line = strings.TrimSpace(line)
			if i := strings.Index(line, " #"); i >= 0 {
				line = strings.TrimSpace(line[:i])
			}
			if line == "" || line == ORTSetup {
				continue
			}
			args, ok := strings.CutPrefix(line, "go run ./tools/"+tool+" ")
			if !ok {
				others = append(others, line)
				continue
			}
			var fields []string
			for _, f := range strings.Fields(args) {
				if strings.HasPrefix(f, "out/") {
					f = outDir + "/" + strings.TrimPrefix(f, "out/")
				}
				fields = append(fields, f)
			}
			cmds = append(cmds, fields)
		}
	}
	return cmds, others
}
