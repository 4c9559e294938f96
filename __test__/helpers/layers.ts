/**
 * The layer rules of src/ (the table is src/layers.json): every relative import in src/ is
 * read with the TypeScript parser (static, type-only, re-exports and dynamic `import()`),
 * mapped to the top-level folder it lands in, and checked: a folder may import its own
 * layer or lower ones, the folder graph has no cycle, and no module imports itself through
 * others. Run it directly to print the folder graph and the violations of a tree:
 *
 *     npx tsx __test__/helpers/layers.ts [SRC_DIR]
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/** src/layers.json: layers from the bottom up, each a list of top-level folders (or files such as index.ts). */
export interface LayerTable {
  layers: { name: string; folders: string[]; why?: string }[];
}

export interface Edge {
  from: string;
  to: string;
  /** How many imports make this edge, and one of them (file: specifier) to look at. */
  count: number;
  example: string;
}

export interface LayerReport {
  edges: Edge[];
  /** Imports of a higher layer: "from → to (file: specifier)". */
  upward: string[];
  /** Folder cycles, each as "a → b → a". */
  cycles: string[];
  /** Module cycles (inside a folder or across), each as "a.ts → b.ts → a.ts". */
  fileCycles: string[];
  /** Folders (or top-level files) in src/ that the table does not name. */
  unknown: string[];
}

function walk(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The unit a file belongs to: its top-level folder under src/, or its own name at the top. */
function unitOf(src: string, file: string): string {
  return relative(src, file).split(sep)[0]!;
}

/** Every relative module specifier a file imports (import, import type, export from, import()). */
export function importsOf(text: string): string[] {
  return ts.preProcessFile(text, true, true).importedFiles.map((f) => f.fileName).filter((s) => s.startsWith('.'));
}

/** Resolves a relative specifier to a .ts file in src/ (the `.js` of NodeNext imports names the `.ts`), or null if it leaves src/. */
function resolveImport(src: string, file: string, spec: string): string | null {
  const target = resolve(dirname(file), spec);
  if (!target.startsWith(src + sep)) return null;
  for (const c of [target.replace(/\.js$/, '.ts'), target, `${target}.ts`, join(target, 'index.ts')]) {
    if (existsSync(c) && statSync(c).isFile()) return c;
  }
  return target;
}

/** The module graph (`level: 'file'`) or folder graph of a source tree: edges between modules or top-level units, with counts. */
export function folderGraph(src: string, level: 'folder' | 'file' = 'folder'): Edge[] {
  const edges = new Map<string, Edge>();
  const unit = (file: string) => (level === 'file' ? relative(src, file) : unitOf(src, file));
  for (const file of walk(src)) {
    const from = unit(file);
    for (const spec of importsOf(readFileSync(file, 'utf8'))) {
      const target = resolveImport(src, file, spec);
      if (target === null) continue;
      const to = unit(target);
      if (to === from) continue;
      const key = `${from}\0${to}`;
      const e = edges.get(key) ?? { from, to, count: 0, example: `${relative(src, file)}: ${spec}` };
      e.count++;
      edges.set(key, e);
    }
  }
  return [...edges.values()].sort((a, b) => a.from.localeCompare(b.from) || a.to.localeCompare(b.to));
}

/**
 * Cycles of the graph: for each strongly connected component of more than one unit, the
 * shortest cycle through each of its units (rotated to start at its smallest unit, each
 * listed once), as "a → b → a".
 */
export function cyclesOf(edges: Edge[]): string[] {
  const next = new Map<string, string[]>();
  for (const e of edges) next.set(e.from, [...(next.get(e.from) ?? []), e.to]);
  const nodes = [...new Set(edges.flatMap((e) => [e.from, e.to]))].sort();
  // Tarjan's strongly connected components.
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const visit = (v: string) => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1) components.push(c.sort());
    }
  };
  for (const v of nodes) if (!index.has(v)) visit(v);
  const cycles = new Set<string>();
  for (const c of components) {
    const inside = new Set(c);
    for (const start of c) {
      // Breadth first from `start` back to it, inside the component: its shortest cycle.
      const from = new Map<string, string>();
      const queue = [start];
      let found = false;
      while (queue.length > 0 && !found) {
        const v = queue.shift()!;
        for (const w of next.get(v) ?? []) {
          if (!inside.has(w)) continue;
          if (w === start) {
            from.set(start, v);
            found = true;
            break;
          }
          if (from.has(w)) continue;
          from.set(w, v);
          queue.push(w);
        }
      }
      const path = [start];
      for (let v = from.get(start)!; v !== start; v = from.get(v)!) path.unshift(v);
      const at = path.indexOf([...path].sort()[0]!);
      const rotated = [...path.slice(at), ...path.slice(0, at)];
      cycles.add([...rotated, rotated[0]].join(' → '));
    }
  }
  return [...cycles].sort();
}

export function readTable(src: string): LayerTable {
  return JSON.parse(readFileSync(join(src, 'layers.json'), 'utf8')) as LayerTable;
}

/** Checks a source tree against its layer table. */
export function checkLayers(src: string, table: LayerTable = readTable(src)): LayerReport {
  const level = new Map<string, number>();
  table.layers.forEach((l, i) => l.folders.forEach((f) => level.set(f, i)));
  const edges = folderGraph(src);
  const units = new Set(readdirSync(src).filter((n) => statSync(join(src, n)).isDirectory() || (n.endsWith('.ts') && !n.endsWith('.d.ts'))));
  const unknown = [...units].filter((u) => !level.has(u)).sort();
  const upward = edges
    .filter((e) => level.has(e.from) && level.has(e.to) && level.get(e.to)! > level.get(e.from)!)
    .map((e) => `${e.from} (${table.layers[level.get(e.from)!]!.name}) imports ${e.to} (${table.layers[level.get(e.to)!]!.name}), ${e.count}×, e.g. ${e.example}`);
  return { edges, upward, cycles: cyclesOf(edges), fileCycles: cyclesOf(folderGraph(src, 'file')), unknown };
}

/** The graph as text, one edge a line: "from → to (count)". */
export function formatGraph(edges: Edge[]): string {
  return edges.map((e) => `${e.from} → ${e.to} (${e.count})`).join('\n');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const src = resolve(process.argv[2] ?? join(import.meta.dirname, '..', '..', 'src'));
  const edges = folderGraph(src);
  console.log(`folder import graph of ${src} (${edges.length} edges):`);
  console.log(formatGraph(edges));
  const cycles = cyclesOf(edges);
  console.log(cycles.length ? `cycles:\n${cycles.join('\n')}` : 'no folder cycle');
  if (existsSync(join(src, 'layers.json'))) {
    const r = checkLayers(src);
    console.log(r.upward.length ? `imports of a higher layer:\n${r.upward.join('\n')}` : 'no import of a higher layer');
    console.log(r.fileCycles.length ? `module cycles:\n${r.fileCycles.join('\n')}` : 'no module cycle');
    if (r.unknown.length) console.log(`not in layers.json: ${r.unknown.join(', ')}`);
  }
}
