// A module-resolution hook (node:module register) that adds the "source" export condition, so
// that `@qrlhf/*` resolves to the TypeScript sources, as `node --conditions=source` would.
export async function resolve(specifier, context, nextResolve) {
  const conditions = context.conditions.includes('source') ? context.conditions : [...context.conditions, 'source'];
  return nextResolve(specifier, { ...context, conditions });
}
