// The layer rules of src/ (src/layers.json): each folder imports only its own layer or
// lower ones, no folder cycle, no module cycle, no folder missing from the table. The
// check itself is shown to fail on deliberate violations in a copy of the tree.
import test from 'ava';
import { cpSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { checkLayers, readTable } from './helpers/layers.js';
import { tempDir } from './helpers/tmp.js';

const SRC = join(import.meta.dirname, '..', 'src');

test('src/ imports only downward: no import of a higher layer, no folder or module cycle, every folder in the table', (t) => {
  const r = checkLayers(SRC);
  t.deepEqual(r.upward, []);
  t.deepEqual(r.cycles, []);
  t.deepEqual(r.fileCycles, []);
  t.deepEqual(r.unknown, []);
  // The graph is read for real: the builder uses the stage store and the spec, the CLI the builder.
  const has = (from: string, to: string) => r.edges.some((e) => e.from === from && e.to === to);
  t.true(has('builder', 'stages') && has('builder', 'spec') && has('cli', 'builder'));
  t.false(has('stages', 'spec') || has('stages', 'builder'), 'the stage store knows nothing of specs or builders');
});

test('the check fails on an upward import, a same-layer cycle, a module cycle and an unknown folder', (t) => {
  const copy = tempDir(t, 'osfarm-layers-');
  cpSync(SRC, copy, { recursive: true, filter: (p) => !p.includes('/assets') });
  t.deepEqual(checkLayers(copy).upward, [], 'the copy starts clean');
  // base importing the web front end: upward, and a cycle (web imports base).
  writeFileSync(join(copy, 'base', 'bad.ts'), "export { createWebHandler } from '../web/index.js';\n");
  // blocks ↔ repo: the same layer, so not upward, but a cycle (repo imports blocks).
  writeFileSync(join(copy, 'blocks', 'bad.ts'), "export type { Plan } from '../repo/index.js';\n");
  // two modules of one folder importing each other.
  writeFileSync(join(copy, 'pack', 'a.ts'), "export { b } from './b.js';\nexport const a = 1;\n");
  writeFileSync(join(copy, 'pack', 'b.ts'), "export { a } from './a.js';\nexport const b = 2;\n");
  // a folder nobody put in the table.
  cpSync(join(copy, 'pack'), join(copy, 'grid'), { recursive: true });
  const r = checkLayers(copy);
  t.log(['upward:', ...r.upward, 'cycles:', ...r.cycles, 'module cycles:', ...r.fileCycles, 'unknown:', ...r.unknown].join('\n'));
  t.is(r.upward.length, 1);
  t.regex(r.upward[0]!, /^base \(base\) imports web \(front ends\), 1×, e\.g\. base\/bad\.ts: \.\.\/web\/index\.js$/);
  t.true(r.cycles.some((c) => /^base → .*web.* → base/.test(c)), r.cycles.join('\n'));
  t.true(r.cycles.some((c) => /^blocks → repo → blocks/.test(c)), r.cycles.join('\n'));
  t.true(r.fileCycles.some((c) => c === 'pack/a.ts → pack/b.ts → pack/a.ts'), r.fileCycles.join('\n'));
  t.deepEqual(r.unknown, ['grid']);
  // A new folder gets a row (here the layer of pack) and is then checked like any other.
  const table = readTable(copy);
  table.layers[1]!.folders.push('grid');
  t.deepEqual(checkLayers(copy, table).unknown, []);
});
