/** Rows as an aligned text table: columns padded to their widest cell, two spaces apart, the last one unpadded. */
export function textTable(head: string[], cells: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  return [head, ...cells].map((c) => c.map((v, i) => (i === c.length - 1 ? v : v.padEnd(widths[i]))).join("  ")).join("\n");
}
