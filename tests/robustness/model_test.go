package robustness

import (
	"fmt"
	"math"
	"sort"

	"github.com/anishathalye/porcupine"
)

// The linearizability model: one register per key, "" when the key does not exist.
// Every value written is unique, so a read names the write it saw.

type opKind int

const (
	opGet opKind = iota
	opPut
	opCAS
)

type kvInput struct {
	kind   opKind
	key    string
	value  string // put and CAS: the value written
	expect string // CAS: the value compared with ("": the key does not exist)
}

type kvOutput struct {
	value     string // get, and a failed CAS (its else-branch get): the value read
	succeeded bool   // CAS
	// unknown: the request failed (timeout, no leader, connection lost), so it may or may
	// not have taken effect. Only kept when a later read saw its value: it took effect.
	unknown bool
}

var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return "" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		s, in, out := state.(string), input.(kvInput), output.(kvOutput)
		switch in.kind {
		case opGet:
			return out.value == s, s
		case opPut:
			return true, in.value
		default:
			if out.unknown || out.succeeded {
				return s == in.expect, in.value
			}
			return s != in.expect && out.value == s, s
		}
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(kvInput), output.(kvOutput)
		suffix := ""
		if out.unknown {
			suffix = " (outcome unknown)"
		}
		switch in.kind {
		case opGet:
			return fmt.Sprintf("get(%s) -> %q", in.key, out.value)
		case opPut:
			return fmt.Sprintf("put(%s, %q)%s", in.key, in.value, suffix)
		default:
			return fmt.Sprintf("cas(%s, %q -> %q) -> %v %q%s", in.key, in.expect, in.value, out.succeeded, out.value, suffix)
		}
	},
}

// settleUnknown drops each write whose outcome is unknown and whose value nobody read (it
// may not have happened, and if it did nothing observed it: placing it after every other
// operation, as an unbounded return time allows, is the same as dropping it), and bounds
// the others' return by the first response that saw their value (they took effect before
// it). Unbounded operations would make the checker's search explode, as etcd's robustness
// tests also find.
func settleUnknown(history []porcupine.Operation) (kept []porcupine.Operation, dropped int) {
	seen := map[string]int64{} // value -> earliest return of an operation that observed it
	note := func(v string, at int64) {
		if v == "" {
			return
		}
		if old, ok := seen[v]; !ok || at < old {
			seen[v] = at
		}
	}
	for _, op := range history {
		in, out := op.Input.(kvInput), op.Output.(kvOutput)
		if out.unknown {
			continue
		}
		switch in.kind {
		case opGet:
			note(out.value, op.Return)
		case opCAS:
			if out.succeeded {
				note(in.expect, op.Return)
			} else {
				note(out.value, op.Return)
			}
		}
	}
	for _, op := range history {
		if op.Output.(kvOutput).unknown {
			at, ok := seen[op.Input.(kvInput).value]
			if !ok {
				dropped++
				continue
			}
			op.Return = at
		}
		if op.Return == math.MaxInt64 {
			panic("an operation without a return")
		}
		kept = append(kept, op)
	}
	return kept, dropped
}
